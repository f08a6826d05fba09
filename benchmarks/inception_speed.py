"""The FID Inception network on this CPU: what each speed-up buys and what it changes (issue 19).

    python benchmarks/inception_speed.py [--n 400] [--batch-size 50] [--threads 2] [--repeats 3]

Every variant takes pool3 features of the same n real mnist16 images (batch 50, after one
warm-up batch), in one process; the variants take turns, --repeats rounds, and each one's
images/s is its median over the rounds (the first variant of a process is not favoured):

- ``unfolded``: pytorch-fid's network as loaded, batch norms separate, NCHW;
- ``folded`` (the code before issue 19): batch norms folded into the convolutions, NCHW;
- ``channels-last`` (the code now): folded, weights and inputs NHWC;
- ``bf16``: channels-last under bfloat16 autocast;
- ``jit``: folded, traced, frozen and optimize_for_inference'd (oneDNN);
- ``compile``: channels-last through torch.compile with inductor's freezing (its compile time
  is reported apart: it is paid once per process).

For each: images/s; the largest relative change of a feature vector against ``folded``
(max over images of |f - f_folded| / |f_folded|); and the relative change of the FID between the
two halves of the images. The issue's bar keeps a variant that is faster and changes features by
less than 1e-3 (FID by less than 0.1%).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch

from ddpmctl import registry
from ddpmctl.devices import set_threads
from ddpmctl.metrics.fid import frechet_distance
from ddpmctl.metrics.inception import build_inception, find_weights, to_inception_input

CL = torch.channels_last


def features(fn: Callable, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, float]:
    """pool3 features of ``images`` and the images/s, after one warm-up batch."""
    with torch.inference_mode():
        fn(images[:batch_size])
        t0 = time.perf_counter()
        out = [fn(images[s : s + batch_size]).double() for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy(), len(images) / (time.perf_counter() - t0)


def fid_of_halves(f: np.ndarray) -> float:
    a, b = f[: len(f) // 2], f[len(f) // 2 :]
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def variants(weights) -> dict[str, Callable]:
    unfolded, folded = build_inception(weights, fold=False), build_inception(weights)
    cl = copy.deepcopy(folded).to(memory_format=CL)

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cl(to_inception_input(x).contiguous(memory_format=CL)).float()

    with torch.no_grad():
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(folded), torch.randn(2, 3, 299, 299))))
    return {
        "unfolded": lambda x: unfolded(to_inception_input(x)),
        "folded": lambda x: folded(to_inception_input(x)),
        "channels-last": lambda x: cl(to_inception_input(x).contiguous(memory_format=CL)),
        "bf16": bf16,
        "jit": lambda x: traced(to_inception_input(x)),
    }


def compiled(weights, images: torch.Tensor) -> tuple[Callable, float]:
    import torch._inductor.config as inductor

    inductor.freezing = True  # weights as constants: oneDNN prepacks the convolutions
    net = torch.compile(build_inception(weights).to(memory_format=CL))
    fn = lambda x: net(to_inception_input(x).contiguous(memory_format=CL))  # noqa: E731
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(images[:2])
    return fn, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    set_threads(args.threads)
    images = registry.build("dataset", "mnist16", {}).x[: args.n]
    weights = find_weights()
    fns = variants(weights)
    compile_s = None
    if not args.no_compile:
        fns["compile"], compile_s = compiled(weights, images)
    rows, ref = {}, None
    for r in range(args.repeats):
        for name in ["folded", *[k for k in fns if k != "folded"]]:
            f, per_s = features(fns[name], images, args.batch_size)
            print(f"round {r + 1}: {name:14s} {per_s:6.2f} images/s", flush=True)
            if r == 0:
                ref = f if ref is None else ref
                rel = float((np.linalg.norm(f - ref, axis=1) / np.linalg.norm(ref, axis=1)).max())
                rows[name] = {"per_s": [], "max_rel_feature_change": rel, "fid_halves": fid_of_halves(f)}
            rows[name]["per_s"].append(per_s)
    for row in rows.values():
        row["images_per_s"] = round(statistics.median(row["per_s"]), 2)
    base_fid = rows["folded"]["fid_halves"]
    for name, row in rows.items():
        row["speedup"] = round(row["images_per_s"] / rows["folded"]["images_per_s"], 3)
        row["rel_fid_change"] = abs(row["fid_halves"] - base_fid) / base_fid
    print(json.dumps({"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
                      "n": args.n, "batch_size": args.batch_size, "weights": weights.source, "compile_seconds": compile_s, "variants": rows}, indent=2))
    print("\n| variant | images/s | vs folded (before) | max relative feature change | relative FID change |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['images_per_s']:.1f} | {row['speedup']:.2f}x | {row['max_rel_feature_change']:.1e} | {row['rel_fid_change']:.1e} |")


if __name__ == "__main__":
    main()
