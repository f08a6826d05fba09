"""GroupNorm on the CPU by memory format: the contiguous (NCHW) kernel, torch's channels-last
kernel, and channels-last converted to NCHW and back around the contiguous kernel, at the
feature-map shapes of the mnist16 default U-Net (batch 64, 8 groups).

    python benchmarks/groupnorm.py            # one thread
    python benchmarks/groupnorm.py --threads 2

Prints microseconds per call (mean of --calls after 5 warm-up calls).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(32, 16), (64, 16), (64, 8), (64, 4)]  # (channels, side) of the U-Net's levels


def per_call(fn, calls: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"GroupNorm, 8 groups, batch {args.batch}, {args.threads} thread(s), microseconds per call\n")
    print("| channels x side | NCHW | channels-last | channels-last via NCHW and back |\n|---|---|---|---|")
    for c, s in SHAPES:
        x = torch.randn(args.batch, c, s, s)
        w, b = torch.randn(c), torch.randn(c)
        xl = x.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(F.group_norm(xl, 8, w, b), F.group_norm(x, 8, w, b), atol=1e-4)
        nchw = per_call(lambda: F.group_norm(x, 8, w, b), args.calls)
        cl = per_call(lambda: F.group_norm(xl, 8, w, b), args.calls)
        via = per_call(lambda: F.group_norm(xl.contiguous(), 8, w, b).contiguous(memory_format=torch.channels_last), args.calls)
        print(f"| {c} x {s}x{s} | {nchw:.0f} | {cl:.0f} | {via:.0f} |")


if __name__ == "__main__":
    main()
