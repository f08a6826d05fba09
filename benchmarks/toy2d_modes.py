"""Issue 15's 2-D bar on 8gaussians, looked at closely: W2 / floor over several independent draws
(samples, and the wasserstein metric's fresh data draws with ref_seed 0, 2, 4, ...), and what the samples get right or wrong: each mode's share, the fraction
farther than 3 mode standard deviations from every mode (leakage between modes), each mode's width.

    python benchmarks/toy2d_modes.py --process edm          # or flow, ddpm

Trains the default 2-D config (through the API) into benchmarks/out/toy2d-modes/PROCESS.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import ddpmctl
from ddpmctl import load_dataset
from ddpmctl.datasets.toy2d import eight_centers
from ddpmctl.metrics.toy2d import wasserstein

STD = 0.2  # the 8gaussians default mode width (datasets/toy2d.py)
SAMPLERS = (("ddpm", None), ("heun", 50), ("ipndm", 20))


def modes(x: torch.Tensor) -> tuple[torch.Tensor, float, list[float]]:
    """Each mode's share, the fraction farther than 3 STD from every mode, each mode's width."""
    centers = eight_centers()
    d = torch.cdist(x.double(), centers)
    k = d.argmin(1)
    shares = torch.bincount(k, minlength=8).double() / len(x)
    far = float((d.min(1).values > 3 * STD).double().mean())
    return shares, far, [float((x[k == j].double() - centers[j]).std()) for j in range(8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--process", default="edm")
    p.add_argument("--draws", type=int, default=3, help="independent draws of n samples and 2 x n fresh data points")
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    run = ddpmctl.train(data="8gaussians", process=args.process, runs_dir="benchmarks/out/toy2d-modes", name=args.process, threads=2)
    ds = load_dataset("8gaussians")
    for sampler, steps in SAMPLERS:
        ratios = []
        for seed in range(args.draws):  # the metric's floor uses ref_seed + 1: even seeds keep the draws apart
            r = wasserstein(run.sample(n=args.n, sampler=sampler, steps=steps, seed=seed).x, ds, ref_seed=2 * seed)
            ratios.append(r.values["w2"] / r.floor["w2"])
        shares, far, widths = modes(run.sample(n=20000, sampler=sampler, steps=steps, seed=9).x)
        print(f"{args.process} {sampler}: W2 / floor {[round(r, 2) for r in ratios]} (mean {np.mean(ratios):.3f}); "
              f"largest share error {float((shares - 1 / 8).abs().max()):.4f}; farther than 3 std {far:.4f}; "
              f"widths {[round(w, 3) for w in widths]}", flush=True)
    shares, far, widths = modes(ds.x[:20000])
    print(f"data: farther than 3 std {far:.4f}; widths {[round(w, 3) for w in widths]}")


if __name__ == "__main__":
    main()
