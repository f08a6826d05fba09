"""Issue 18: phase 4 (32x32) in pixel space and in latent space, side by side, at the same total
training wall time.

    python benchmarks/phase4.py fashion32 --budget 12m
    python benchmarks/phase4.py emoji32 --budget 12m

For each dataset, one after the other on this machine:

    pixel    `ddpmctl train --data D` for the whole budget (the image defaults: EDM, U-Net)
    latent   `ddpmctl autoencoder train --data D` for --ae-budget, the training set encoded once,
             then `ddpmctl train --data D --latent AE` for the rest of the budget

Each run's step count is set so that its learning-rate schedule ends at its budget: a probe of
40 steps measures the time per step first (the probe's time is not counted). Then, the same
way for both models: --n samples with Heun's 25 steps (49 network evaluations, seed 0), their
Inception FID against the training images beside its floor (as many held-out real images), and
sampling images per second at those 25 steps (batch 256, the decoder included). The
autoencoder's reconstruction FID of the same held-out images is the floor a latent model can
reach. Sample grids and the reconstructions go to --figures.

Results: benchmarks/out/phase4/<dataset>/results.json; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

import ddpmctl
from ddpmctl import registry
from ddpmctl.config import data_dir
from ddpmctl.devices import set_threads
from ddpmctl.metrics.base import score
from ddpmctl.stopping import parse_duration

REPO = Path(__file__).resolve().parents[1]
DATASETS = {  # data settings, held-out fraction, how to import it into the data directory
    "fashion32": ({"data": "fashion-mnist", "data_options": {"size": 32}}, "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")),
    "emoji32": ({"data": "emoji32", "data_options": {"held_out": 0.25}}, "emoji32", REPO.parent / "shared" / "data" / "emoji32"),
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def ensure_data(name: str, source: Path) -> None:
    from ddpmctl.datasets.fetch import fetch

    folder = {"fashion-mnist": data_dir() / "FashionMNIST" / "raw", "emoji32": data_dir() / "emoji32"}[name]
    if not folder.is_dir():
        for line in fetch(name, source):
            print(line, flush=True)


def seconds_per_step(train, out: Path, **settings) -> float:
    """The time per step of a 40-step probe (steps 20 to 40, after the start-up)."""
    probe = out / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    train(**settings, steps=40, name="probe", runs_dir=out, checkpoint_every=10**6, log_every=20)
    times = [r["time"] for r in map(json.loads, (probe / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    shutil.rmtree(probe)
    return (times[-1] - times[0]) / 20


def train_for(seconds: float, out: Path, name: str, data: dict, **settings) -> tuple[ddpmctl.Run, float, int]:
    """A diffusion run whose schedule ends at ``seconds`` of training; returns it, its wall time and steps."""
    per_step = seconds_per_step(ddpmctl.train, out, **data, **settings, sample_every=0)
    steps = max(100, int(0.97 * seconds / per_step))
    print(f"{name}: {per_step * 1000:.0f} ms a step -> {steps} steps in {seconds:.0f} s", flush=True)
    run, took = timed(lambda: ddpmctl.train(**data, **settings, steps=steps, name=name, runs_dir=out, sample_every=0, max_time=seconds))
    return run, took, json.loads((run.path / "stop.json").read_text())["step"]  # the steps reached (max_time may stop it first)


def autoencoder_for(seconds: float, out: Path, data: dict, options: dict) -> tuple[Path, float, int]:
    per_step = seconds_per_step(ddpmctl.train_autoencoder, out, **data, autoencoder_options=options, eval_n=100)
    steps = max(100, int(seconds / per_step))
    print(f"autoencoder: {per_step * 1000:.0f} ms a step -> {steps} steps in {seconds:.0f} s", flush=True)
    ae, took = timed(lambda: ddpmctl.train_autoencoder(**data, autoencoder_options=options, steps=steps, name="ae", runs_dir=out,
                                                        checkpoint_every=max(steps // 4, 1), max_time=seconds * 1.05))
    return Path(ae.source), took, steps


def fid(x: torch.Tensor, ds, n_ref: int) -> tuple[float, float]:
    fn, opts = registry.resolve("metric", "fid", {"n_ref": n_ref})
    r = score(fn, x, ds, opts.model_dump())
    return r.values["fid"], r.floor["fid"]


def quality(run: ddpmctl.Run, n: int, n_ref: int) -> dict:
    """FID of n Heun-25 samples with its floor, and sampling images/s at 25 steps."""
    s = run.sample(n=n, sampler="heun", steps=25, seed=0, batch_size=256)
    value, floor = fid(s.x, run.dataset(), n_ref)
    run.sample(n=32, sampler="heun", steps=25)  # warm-up
    _, seconds = timed(lambda: run.sample(n=256, sampler="heun", steps=25, batch_size=256))
    return {"fid": value, "fid_floor": floor, "n": n, "nfe": s.record["nfe"], "sample_images_per_s": 256 / seconds, "samples": s}


def encode(ae_path: Path, ds) -> float:
    """Encode the training set once (then cached): the seconds it took, counted in the latent model's time."""
    from ddpmctl.latent import latent_dataset

    t0 = time.perf_counter()
    latent_dataset(ddpmctl.load_autoencoder(ae_path), ds)
    return time.perf_counter() - t0


def reuse(out: Path) -> tuple[dict, dict]:
    """The pixel row and the autoencoder's figures of an earlier results.json (--latent-only); its samples are redrawn for the grid."""
    earlier = json.loads((out / "results.json").read_text())
    pixel = earlier["rows"]["pixel"]
    pixel["samples"] = ddpmctl.Run.load(out / "pixel").sample(n=64, sampler="heun", steps=25, seed=0)
    keep = ("autoencoder_s", "autoencoder_steps", "encode_s", "reconstruction_fid", "reconstruction_fid_floor")
    return {"pixel": pixel}, {k: earlier["rows"]["latent"][k] for k in keep}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--budget", default="12m", help="training wall time of each model, autoencoder included")
    p.add_argument("--ae-budget", default="3m", help="of which the autoencoder's training")
    p.add_argument("--ae-options", default="{}", help="JSON options of the kl autoencoder")
    p.add_argument("--n", type=int, default=1000, help="samples per FID (emoji32: at most its 350 held-out images)")
    p.add_argument("--n-ref", type=int, default=None, help="training images in the FID reference (default: max(n, 1000), at most all)")
    p.add_argument("--latent-only", action="store_true", help="keep the pixel row and the autoencoder of an earlier results.json; train the latent model "
                   "again with what is left of the pixel model's measured time")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/phase4"))
    p.add_argument("--figures", type=Path, default=Path("docs/img"))
    args = p.parse_args()
    set_threads(args.threads)
    data, source_name, source = DATASETS[args.dataset]
    ensure_data(source_name, source)
    out = args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    budget, ae_budget = parse_duration(args.budget), parse_duration(args.ae_budget)
    ds = ddpmctl.load_dataset(data["data"], **data["data_options"])
    n = min(args.n, len(ds.fresh(args.n, 0)[0]))
    n_ref = args.n_ref or min(len(ds), max(n, 1000))  # Inception on the CPU: about 7 images/s, so not all 60,000
    if args.latent_only:
        rows, first = reuse(out)
        ae_path = out / "ae"
        budget = rows["pixel"]["train_s"] - first["autoencoder_s"] - first["encode_s"]  # the latent model's total: the pixel model's
    else:
        pixel, took, steps = train_for(budget, out, "pixel", data)
        rows = {"pixel": {"train_s": took, "steps": steps, **quality(pixel, n, n_ref)}}
        ae_path, ae_s, ae_steps = autoencoder_for(ae_budget, out, data, json.loads(args.ae_options))
        recon = ddpmctl.evaluate_autoencoder(ae_path, ["fid"], n=n, options={"fid": {"n_ref": n_ref}})["fid"]
        first = {"autoencoder_s": ae_s, "autoencoder_steps": ae_steps, "reconstruction_fid": recon.values["fid"], "reconstruction_fid_floor": recon.floor["fid"]}
        first["encode_s"] = encode(ae_path, ds)
        budget = budget - ae_s - first["encode_s"]
    ae = ddpmctl.load_autoencoder(ae_path)
    latent, took, steps = train_for(budget, out, "latent", data, latent=ae_path)
    rows["latent"] = {"train_s": took, "steps": steps, **first, "total_s": first["autoencoder_s"] + first["encode_s"] + took,
                      "autoencoder_parameters": sum(p.numel() for p in ae.net.parameters()), **quality(latent, n, n_ref)}

    from ddpmctl import plots

    args.figures.mkdir(parents=True, exist_ok=True)
    for kind, row in rows.items():
        plots.image_grid(row.pop("samples").x[:64], args.figures / f"phase4-{args.dataset}-{kind}.png", nrow=8)
    shutil.copy(ae_path / "reconstructions.png", args.figures / f"phase4-{args.dataset}-reconstructions.png")
    result = {"dataset": args.dataset, "data": data, "budget_s": budget, "n": n, "n_ref": n_ref, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "fid_ratio_latent_to_pixel": rows["latent"]["fid"] / rows["pixel"]["fid"],
              "sampling_speedup": rows["latent"]["sample_images_per_s"] / rows["pixel"]["sample_images_per_s"]}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"| model | training s | steps | FID (n = {n}) | floor | reconstruction FID | sample images/s (Heun 25) |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in rows.items():
        total = f"{r['total_s']:.0f} (autoencoder {r['autoencoder_s']:.0f} + encoding {r['encode_s']:.0f} + diffusion {r['train_s']:.0f})" if kind == "latent" else f"{r['train_s']:.0f}"
        print(f"| {kind} | {total} | {r['steps']} | {r['fid']:.1f} | {r['fid_floor']:.1f} | {r.get('reconstruction_fid', float('nan')):.1f} | {r['sample_images_per_s']:.1f} |")
    print(f"FID latent / pixel = {result['fid_ratio_latent_to_pixel']:.2f}; sampling speed-up {result['sampling_speedup']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
