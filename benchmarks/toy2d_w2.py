"""Issue 2's bar, measured: for every 2-D dataset, the default config trains in at most
3 minutes on this machine and reaches W2(samples, data) <= 1.5 x W2(data, data') at
n = 2000 with 1000-step ancestral sampling; and issue 15's: with --process edm or flow, the
same default training time reaches W2 <= 1.2 x the floor.

    python benchmarks/toy2d_w2.py [--datasets spiral,moons] [--process edm] [--out benchmarks/out/toy2d]

Everything goes through the `ddpmctl` command line, as a user would run it. Prints a
Markdown table (for docs/benchmarks.md) and writes it with the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddpmctl import registry

DATASETS = ["8gaussians", "gaussian-mixture", "moons", "swissroll", "spiral", "checkerboard", "circles"]


def ddpmctl(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "ddpmctl", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ddpmctl {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/toy2d"))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--process", default="ddpm", help="diffusion process trained (ddpm, edm, flow)")
    p.add_argument("--bar", type=float, default=None, help="W2 / floor counted as met (default: 1.5 for ddpm, 1.2 otherwise)")
    args = p.parse_args()
    bar = args.bar or (1.5 if args.process == "ddpm" else 1.2)
    args.out = args.out / args.process if args.process != "ddpm" else args.out
    rows = []
    for name in args.datasets.split(","):
        registry.entry("dataset", name)
        run = args.out / name
        if run.exists():
            import shutil

            shutil.rmtree(run)
        t0 = time.perf_counter()
        ddpmctl("train", "--data", name, "--name", name, "--runs-dir", args.out, "--process", args.process)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ddpmctl("eval", run, "--metric", "wasserstein", "--metric", "kl", "--n", args.n)
        eval_s = time.perf_counter() - t0
        w = json.loads((run / "eval" / f"wasserstein-ddpm-1000steps-n{args.n}.json").read_text())
        k = json.loads((run / "eval" / f"kl-ddpm-1000steps-n{args.n}.json").read_text())
        row = {
            "dataset": name,
            "process": args.process,
            "train_s": round(train_s, 1),
            "sample_eval_s": round(eval_s, 1),
            "w2": w["values"]["w2"],
            "w2_floor": w["floor"]["w2"],
            "ratio": w["values"]["w2"] / w["floor"]["w2"],
            "kl_data_samples": k["values"]["kl(data||samples)"],
            "kl_floor": k["floor"]["kl(data||samples)"],
        }
        row["pass"] = row["train_s"] <= 180 and row["ratio"] <= bar
        rows.append(row)
        print(json.dumps(row), flush=True)

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    lines = [
        f"Machine: {machine}; process {args.process}; bar W2 / floor <= {bar}",
        "",
        "| dataset | train time (s) | W2(samples, data) | W2 floor (data, data') | ratio | KL(data‖samples) | KL floor | bar met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['train_s']} | {r['w2']:.4f} | {r['w2_floor']:.4f} | {r['ratio']:.2f} | "
            f"{r['kl_data_samples']:.4f} | {r['kl_floor']:.4f} | {'yes' if r['pass'] else 'NO'} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
