"""Issue 2's bar, measured: for every 2-D dataset, the default config trains in at most
3 minutes on this machine and reaches W2(samples, data) <= 1.5 x W2(data, data') at
n = 2000 with 1000-step ancestral sampling; and issue 15's: with --process edm or flow, the
same default training time reaches W2 <= 1.2 x the floor.

    python benchmarks/toy2d_w2.py [--datasets spiral,moons] [--process edm] [--draws 10] [--out benchmarks/out/toy2d]

Training goes through the `ddpmctl` command line, as a user would run it. W2 at n = 2000 is a
noisy estimate (one draw of samples against one draw of data: W2 / floor of one model spreads
over 0.9-1.6 on 8gaussians), so each model is scored over ``--draws`` independent draws of
samples (seed k) and of fresh data (the metric's ref_seed 2k, its floor 2k + 1): the ratio is
mean W2(samples, data) / mean W2(data, data'), both at n = 2000, with the per-draw range
beside it. Prints a Markdown table (for docs/benchmarks.md) and writes it with the raw numbers
as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpmctl import registry
from ddpmctl.api import Run
from ddpmctl.metrics.toy2d import kl, wasserstein

DATASETS = ["8gaussians", "gaussian-mixture", "moons", "swissroll", "spiral", "checkerboard", "circles"]


def ddpmctl(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "ddpmctl", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ddpmctl {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r


def score(path: Path, n: int, draws: int, sampler: str | None, steps: int | None = None) -> dict:
    """W2 and histogram KL of ``draws`` independent draws of ``n`` samples, each against fresh data."""
    run = Run.load(path, device="cpu")
    ds = run.dataset()
    w, f, kls, kl_floors = [], [], [], []
    for k in range(draws):  # the floor uses ref_seed + 1: even ref_seeds keep the draws apart
        x = run.sample(n=n, sampler=sampler, steps=steps, seed=k).x
        r, h = wasserstein(x, ds, ref_seed=2 * k), kl(x, ds, ref_seed=2 * k)
        w.append(r.values["w2"])
        f.append(r.floor["w2"])
        kls.append(h.values["kl(data||samples)"])
        kl_floors.append(h.floor["kl(data||samples)"])
    return {"w2": float(np.mean(w)), "w2_floor": float(np.mean(f)), "ratio": float(np.mean(w) / np.mean(f)),
            "ratios": [a / b for a, b in zip(w, f)], "w2_draws": w, "floor_draws": f,
            "kl_data_samples": float(np.mean(kls)), "kl_floor": float(np.mean(kl_floors))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/toy2d"))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--process", default="ddpm", help="diffusion process trained (ddpm, edm, flow)")
    p.add_argument("--draws", type=int, default=10, help="independent draws of samples and data averaged (see above)")
    p.add_argument("--sampler", default="ddpm", help="sampler, with its default steps (ddpm: 1000 ancestral steps)")
    p.add_argument("--rescore", action="store_true", help="score the runs trained before under --out again (train times from their results.json)")
    p.add_argument("--bar", type=float, default=None, help="W2 / floor counted as met (default: 1.5 for ddpm, 1.2 otherwise)")
    args = p.parse_args()
    bar = args.bar or (1.5 if args.process == "ddpm" else 1.2)
    args.out = args.out / args.process if args.process != "ddpm" else args.out
    rows = []
    before = json.loads((args.out / "results.json").read_text())["rows"] if args.rescore else []
    for name in args.datasets.split(","):
        registry.entry("dataset", name)
        run = args.out / name
        if args.rescore:
            train_s = next(r["train_s"] for r in before if r["dataset"] == name)
        else:
            if run.exists():
                import shutil

                shutil.rmtree(run)
            t0 = time.perf_counter()
            ddpmctl("train", "--data", name, "--name", name, "--runs-dir", args.out, "--process", args.process)
            train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        row = {"dataset": name, "process": args.process, "train_s": round(train_s, 1), **score(run, args.n, args.draws, args.sampler)}
        row["sample_eval_s"] = round(time.perf_counter() - t0, 1)
        row["pass"] = row["train_s"] <= 180 and row["ratio"] <= bar
        rows.append(row)
        print(json.dumps(row), flush=True)

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    lines = [
        f"Machine: {machine}; process {args.process}; bar W2 / floor <= {bar}",
        "",
        f"| dataset | train time (s) | W2(samples, data), mean of {args.draws} | W2 floor (data, data') | ratio of means | ratio per draw | KL(data‖samples) | KL floor | bar met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['train_s']} | {r['w2']:.4f} | {r['w2_floor']:.4f} | {r['ratio']:.2f} | {min(r['ratios']):.2f}-{max(r['ratios']):.2f} | "
            f"{r['kl_data_samples']:.4f} | {r['kl_floor']:.4f} | {'yes' if r['pass'] else 'NO'} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "draws": args.draws, "sampler": args.sampler, "rows": rows}, indent=2))
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
