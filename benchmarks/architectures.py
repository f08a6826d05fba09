"""Issue 17's study (docs/architectures.md): every run of the given sweeps, scored the same way
after training.

    python benchmarks/architectures.py benchmarks/out/architectures/unet-dit-digit0 benchmarks/out/architectures/dit96-digit0

The runs come from `ddpmctl sweep` commands (docs/architectures.md lists them). For each run:
its parameters; the steps and training wall time it reached (stop.json); the classifier FID of
--n samples against the held-out zeros, with its floor (--sampler, --steps: Heun's 25 steps,
49 network evaluations, by default, the same for every run; seed 0); the share the MNIST
classifier reads as zero; and sampling images per second with that sampler on this machine
(512 images); with --fid, the Inception FID of the same samples against the training set, with
its floor (held-out images). Runs that differ only in their seed are one variant: the table gives each
seed and the mean. A run already scored at its current step is not scored again.

Results: --out (default benchmarks/out/architectures/scores.json); a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import ddpmctl
from ddpmctl.devices import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewstep import image_scores, images_per_second  # noqa: E402


def runs_of(sweep: Path) -> list[Path]:
    """The cell runs of a sweep folder, in the order sweep.json lists them."""
    cells = json.loads((sweep / "sweep.json").read_text())["cells"]
    return [sweep / name for name in cells if (sweep / name / "stop.json").is_file()]


def variant(run: Path) -> str:
    """The sweep and cell name without its seed: the runs one row of the table averages."""
    cell = re.sub(r"(^|,)seed=\d+", "", run.name).strip(",")
    return f"{run.parent.name}: {cell or 'defaults'}"


def score_run(run: Path, n: int, sampler: str, steps: int, guidance: float, fid: bool, device: str = "cpu") -> dict:
    stop = json.loads((run / "stop.json").read_text())
    r = ddpmctl.Run.load(run, device=device)
    row = {"run": str(run), "variant": variant(run), "seed": r.config.seed, "network": r.config.network,
           "network_options": r.config.network_options, "parameters": sum(p.numel() for p in r.model.net.parameters()),
           "step": stop["step"], "train_seconds": stop["time"], "stopped_by": stop["reason"]}
    if r.num_classes:
        labels = r.labels(n, per_class=n // r.num_classes)
        row.update(image_scores(r, steps, sampler, len(labels), labels=labels, guidance=guidance, fid=fid), guidance=guidance)
        row["min_class_accuracy"] = min(row["per_class"].values())
    else:
        row.update(image_scores(r, steps, sampler, n, fid=fid))
    row["sample_images_per_s"] = images_per_second(r, sampler, steps)
    return row


def markdown(rows: list[dict]) -> str:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    lines = ["| variant | parameters | seeds | steps | training s | classifier FID (each seed) | mean | floor | FID (each seed) | mean | floor | zeros (conditional: lowest class accuracy) | sample images/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, g in groups.items():
        g = sorted(g, key=lambda r: r["seed"])
        fids = [r["classifier-fid"] for r in g]
        steps, seconds = "/".join(str(r["step"]) for r in g), "/".join(f"{r['train_seconds']:.0f}" for r in g)
        lines.append(f"| {name} | {g[0]['parameters'] / 1e6:.2f} M | {len(g)} | {steps} | {seconds} | {' / '.join(f'{f:.2f}' for f in fids)} | "
                     f"**{statistics.mean(fids):.2f}** | {g[0]['classifier-fid floor']:.2f} | {inception(g)} | "
                     f"{statistics.mean(r.get('zeros', r.get('min_class_accuracy', 0)) for r in g):.1%} | {statistics.mean(r['sample_images_per_s'] for r in g):.0f} |")
    return "\n".join(lines)


def inception(g: list[dict]) -> str:
    """The FID columns of a variant: each seed, the mean and the floor (blank where not scored)."""
    fids = [r["fid"] for r in g if "fid" in r]
    if not fids:
        return " | | "
    g = [r for r in g if "fid" in r]
    return f"{' / '.join(f'{f:.1f}' for f in fids)} | **{statistics.mean(fids):.1f}** | {g[0]['fid floor']:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (RUNS_DIR/NAME of `ddpmctl sweep`)")
    p.add_argument("--n", type=int, default=980, help="samples per score (980: every held-out zero)")
    p.add_argument("--sampler", default="heun")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of conditional runs")
    p.add_argument("--fid", action="store_true", help="also the Inception FID (about 2 minutes per run at n = 980 on 2 CPU cores)")
    p.add_argument("--fid-seeds", default=None, help="with --fid, only the runs of these seeds (comma list; default all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="where to sample (cuda: the matched-GPU-time study, benchmarks/gpu_study.sh)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/architectures/scores.json"))
    args = p.parse_args()
    set_threads(args.threads)
    done = {r["run"]: r for r in json.loads(args.out.read_text())} if args.out.is_file() else {}
    rows = []
    for sweep in args.sweeps:
        for run in runs_of(sweep):
            step = json.loads((run / "stop.json").read_text())["step"]
            row = done.get(str(run))
            seed = json.loads((run / "config.json").read_text())["config"]["seed"]
            wants_fid = args.fid and (args.fid_seeds is None or str(seed) in args.fid_seeds.split(","))
            how = {"n": args.n, "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance}
            if row is None or row["step"] != step or any(row.get(k, v) != v for k, v in how.items()) or (wants_fid and "fid" not in row):  # rows written before a key existed match it
                print(f"scoring {run} (step {step}, n = {args.n}, {args.sampler} {args.steps} steps)", flush=True)
                row = {**score_run(run, args.n, args.sampler, args.steps, args.guidance, wants_fid, args.device), **how}
                done[str(run)] = row
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(list(done.values()), indent=2))
            rows.append(row)
    print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
