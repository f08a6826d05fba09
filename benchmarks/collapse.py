"""Mode collapse on purpose, and which metric sees it (issue 19; docs/metrics.md, "Seeing mode collapse").

    python benchmarks/collapse.py [RUN] [--n 1000] [--group 10] [--rho 0.2] [--fid]

RUN: a class-conditional image run (default: the ten-digit U-Net of docs/architectures.md,
benchmarks/out/architectures/unet-dit-cond/network=unet). Three sample sets of n images, n / 10
per class, drawn with the same sampler (Heun, 25 steps, guidance 2):

- ``honest``: every sample from its own noise x_T ~ N(0, I);
- ``collapsed``: n / group base noises z_c, and `group` samples from each,
  x_T = sqrt(1 - rho^2) z_c + rho e. Each x_T is still exactly N(0, I), so each sample on its
  own is an honest sample: only the set covers less of the data, a model that draws `group`
  near-copies of each of a tenth as many images. Every class keeps its n / 10 samples;
- ``repeated``: the same with rho = 0, each of n / group samples `group` times over.

Each set is scored by kid and prdc (the digit classifier's features, features=auto), the
classifier FID and, with --fid, the Inception FID, each with its floor (held-out images).
Results: --out (JSON) and a Markdown table on stdout; --png, a grid of the first class of each set.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torchvision

import ddpmctl
from ddpmctl import registry
from ddpmctl.devices import set_threads
from ddpmctl.metrics.base import score

RUN = Path("benchmarks/out/architectures/unet-dit-cond/network=unet")


def noises(kind: str, n: int, shape: tuple[int, ...], group: int, rho: float, seed: int = 0) -> torch.Tensor:
    """x_T (n, *shape): independent for ``honest``; else n / group bases, each drawn ``group`` times
    as sqrt(1 - rho^2) base + rho e (rows of one group adjacent)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "honest":
        return torch.randn((n, *shape), generator=g)
    base = torch.randn((n // group, *shape), generator=g).repeat_interleave(group, dim=0)
    return (1 - rho ** 2) ** 0.5 * base + rho * torch.randn(base.shape, generator=g)


def draw(run: ddpmctl.Run, x_T: torch.Tensor, labels: torch.Tensor, steps: int, guidance: float, batch: int = 250) -> torch.Tensor:
    """Heun samples of ``run`` from the given x_T (what pipeline.sample does, with our noise)."""
    model = run.model
    fn, opts = registry.resolve("sampler", "heun", None)
    den = model.denoiser(guidance)
    out = []
    with torch.inference_mode():
        for s in range(0, len(x_T), batch):
            g = torch.Generator(device=model.device).manual_seed(s)
            x0, _ = fn(den, x_T[s : s + batch].to(model.device), steps, g, None, labels[s : s + batch].to(model.device), **opts.model_dump())
            out.append(model.decode(x0).float().cpu())
            print(f"  {s + len(out[-1])}/{len(x_T)} samples", flush=True)
    return torch.cat(out)


def scores(x: torch.Tensor, labels: torch.Tensor, dataset, fid: bool) -> dict:
    out = {}
    for name in ["kid", "prdc", "classifier-fid"] + (["fid"] if fid else []):
        fn, opts = registry.resolve("metric", name, None)
        r = score(fn, x, dataset, opts.model_dump(), labels=labels)
        out.update({k: v for k, v in r.values.items()})
        out.update({f"{k} floor": v for k, v in r.floor.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", default=RUN)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--group", type=int, default=10)
    p.add_argument("--rho", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--fid", action="store_true", help="also the Inception FID (about a minute a set on 2 CPU cores)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/collapse/collapse.json"))
    p.add_argument("--png", type=Path, default=Path("docs/img/collapse.png"))
    args = p.parse_args()
    set_threads(args.threads)
    run = ddpmctl.Run.load(args.run, device="cpu")
    classes = run.num_classes or 1
    per_class = args.n // classes
    if per_class % args.group:
        raise SystemExit(f"--n / classes ({per_class}) must be a multiple of --group ({args.group}).")
    labels = torch.arange(classes).repeat_interleave(per_class)  # class blocks: a group never spans two classes
    dataset = run.dataset()
    rows, firsts = {}, []
    for kind, rho in (("honest", None), ("collapsed", args.rho), ("repeated", 0.0)):
        print(f"{kind}: sampling", flush=True)
        x = draw(run, noises(kind, len(labels), run.model.shape, args.group, rho or 0.0), labels, args.steps, args.guidance)
        firsts.append(x[:per_class][: 5 * args.group])
        rows[kind] = scores(x, labels, dataset, args.fid)
        print(json.dumps({kind: rows[kind]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "n": len(labels), "group": args.group, "rho": args.rho, "steps": args.steps,
                                    "guidance": args.guidance, "machine": platform.machine(), "rows": rows}, indent=2))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(torch.cat(firsts) * 0.5 + 0.5, args.png, nrow=args.group, padding=1, pad_value=1.0)
    keys = [k for k in ["fid", "classifier-fid", "kid", "precision", "recall", "density", "coverage"] if k in rows["honest"]]
    print("\n| samples | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for kind, row in rows.items():
        print(f"| {kind} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")
    print("| floor (held-out images) | " + " | ".join(f"{rows['honest'][k + ' floor']:.4g}" for k in keys) + " |")
    for kind in ("collapsed", "repeated"):
        r, h = rows[kind], rows["honest"]
        print(f"{kind}: recall {r['recall'] / h['recall']:.2f}x, coverage {r['coverage'] / h['coverage']:.2f}x, precision {r['precision'] / h['precision']:.2f}x of honest")


if __name__ == "__main__":
    main()
