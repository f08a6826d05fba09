"""Compiled sampling against diffusers: ddpmctl's mnist16 default network, channels-last and
through torch.compile (as `ddpmctl sample --compile`), against diffusers' UNet2DModel and
DDPMScheduler at the same size, interleaved; optionally with inductor's freezing (the weights
taken as constants), the variant that was tried and not kept.

    python benchmarks/compile_sampling.py                  # 50-step sampling, 3 repeats, one thread
    python benchmarks/compile_sampling.py --freezing

Prints images per second of each side per repeat and the median ratio ddpmctl / diffusers.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ddpmctl import speed
from ddpmctl.devices import set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--freezing", action="store_true", help="compile with torch._inductor.config.freezing = True")
    args = p.parse_args()
    set_threads(args.threads)
    if args.freezing:
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True
    device, batch = torch.device("cpu"), speed.MODELS["mnist16"]["batch_size"]
    ours = speed.Ours("mnist16", batch, device, compile=True, bf16=False, channels_last=True)
    theirs = speed.Diffusers("mnist16", batch, device, False)
    print(f"compile and warm-up: {speed.timed(lambda: ours.sample(2), device):.1f} s", flush=True)
    theirs.sample(2)
    ratios = []
    for _ in range(args.repeats):
        a = speed.timed(lambda: ours.sample(args.nfe), device)
        b = speed.timed(lambda: theirs.sample(args.nfe), device)
        ratios.append(b / a)
        print(f"ddpmctl {batch / a:.2f} images/s, diffusers {batch / b:.2f} images/s, ratio {b / a:.2f}", flush=True)
    print(f"{'freezing' if args.freezing else 'no freezing'}: median ratio {statistics.median(ratios):.2f} "
          f"({args.nfe} steps, batch {batch}, {torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
