"""Every sampler on every process with the exact denoiser of Gaussian data N(1, 0.5^2 I): the
relative error of the samples' standard deviation (and the error of their mean) at 5, 10, 20 and
50 network evaluations, as a Markdown table for docs/samplers.md.

    python benchmarks/sampler_gaussian.py            # n = 50000 two-dimensional samples, seed 0
    python benchmarks/sampler_gaussian.py --spacing cosine   # every sampler that takes a grid, on one grid

The denoiser is exact, so every error is the sampler's and its grid's (discretisation, and the
finite sigma_max of the process: a mean error of about m s / sigma_max remains at any NFE).
"""

from __future__ import annotations

import argparse

import torch

from ddpmctl import registry
from ddpmctl.denoiser import Prediction
from ddpmctl.schedules import linear

NFES = (5, 10, 20, 50)


class ExactGaussian:
    """E[x_0 | x] for x = x_0 + sigma eps, x_0 ~ N(m, s^2 I): m + s^2 / (s^2 + sigma^2) (x - m)."""

    def __init__(self, process, m: float, s: float):
        self.process, self.m, self.s = process, m, s

    def __call__(self, x, sigma, y=None, sigma_next=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        x0 = self.m + self.s**2 / (self.s**2 + sigma**2) * (x - self.m)
        return Prediction((x - x0) / sigma, x0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--m", type=float, default=1.0)
    p.add_argument("--s", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", default=None, help="one noise-level grid for every sampler that takes one (default: each sampler's own)")
    args = p.parse_args()
    print("| process | sampler (grid) | " + " | ".join(f"{k} NFE" for k in NFES) + " |")
    print("|---|---|" + "---|" * len(NFES))
    for proc_name in registry.names("process"):
        process = registry.build("process", proc_name, {}, schedule=linear(T=1000), prediction="eps")
        for name in registry.names("sampler"):
            fn, opts = registry.resolve("sampler", name, None)
            if args.spacing and "spacing" in type(opts).model_fields:
                opts = registry.validate_options("sampler", name, {"spacing": args.spacing})
            cells = []
            for nfe in NFES:
                steps = (nfe + 1) // 2 if name == "heun" else nfe
                x_T = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
                x0, used = fn(ExactGaussian(process, args.m, args.s), x_T, steps, torch.Generator().manual_seed(args.seed + 1), None, None, **opts.model_dump())
                std_err = float(x0.std()) / args.s - 1
                cells.append(f"{100 * std_err:+.1f}% ({float(x0.mean()) - args.m:+.3f})" + ("" if used == nfe else f" [{used}]"))
            grid = opts.model_dump().get("spacing", "auto")
            if grid == "auto":
                grid = f"auto: {process.default_spacing}"
            print(f"| {proc_name} | {name} ({grid}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
