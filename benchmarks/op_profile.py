"""Where a step's time goes: torch's profiler over training steps and sampling calls of the
mnist16 default model, ours and diffusers' (matched size), grouped into convolutions,
normalisation, attention, elementwise and the rest.

    python benchmarks/op_profile.py                 # 5 training steps, 20 sampling calls, each side
    python benchmarks/op_profile.py --threads 1 --steps 10

Prints the floating-point operations of one forward pass of each side (torch's FlopCounterMode)
and a table of the share of self CPU time per group; writes benchmarks/out/speed/profile.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # the profiler's own log lines are not for the reader

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ddpmctl import speed
from ddpmctl.devices import pick_device, set_threads

# torch operator names -> group (first match wins); everything else is "other".
GROUPS = {
    "convolution": ("conv", "mkldnn_convolution", "_slow_conv2d", "thnn_conv"),
    "normalisation": ("group_norm", "native_group_norm", "layer_norm"),
    "attention": ("scaled_dot_product", "_flash_attention", "bmm", "baddbmm", "softmax"),
    "matmul (linear)": ("addmm", "mm", "linear", "matmul"),
    "optimizer and EMA (foreach)": ("_fused_adamw", "_foreach", "adamw"),
    "elementwise": ("silu", "add", "mul", "sub", "div", "lerp", "sqrt", "copy_", "fill_", "cat", "neg", "exp", "pow", "clamp", "where"),
}


def group(name: str) -> str:
    op = name.split("::")[-1].lower()
    for g, keys in GROUPS.items():
        if any(k in op for k in keys):
            return g
    return "other"


def shares(fn) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: dict[str, float] = {}
    for e in prof.key_averages():
        if e.key.startswith("aten::") or e.key.startswith("mkldnn::"):
            totals[group(e.key)] = totals.get(group(e.key), 0.0) + e.self_cpu_time_total
    all_ = sum(totals.values()) or 1.0
    return {g: t / all_ for g, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def forward_gflop(side, batch: int) -> float:
    """Floating-point operations (GFLOP) of one forward pass of the side's network at ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.randn(batch, *speed.MODELS["mnist16"]["shape"]), torch.randint(0, speed.T, (batch,))
    net = side.state.net if isinstance(side, speed.Ours) else (lambda x, t, y: side.unet(x, t).sample)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t, None)
    return counter.get_total_flops() / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="profiled training steps")
    p.add_argument("--calls", type=int, default=20, help="profiled sampling network calls")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/speed"))
    args = p.parse_args()
    set_threads(args.threads)
    device = pick_device("cpu")
    batch = speed.MODELS["mnist16"]["batch_size"]
    sides = {"ddpmctl": speed.Ours("mnist16", batch, device, False, False), "diffusers": speed.Diffusers("mnist16", batch, device, False)}
    result = {}
    for name, side in sides.items():
        speed.warm_up(side, speed.Settings())
        result[name] = {"train": shares(lambda: side.train(args.steps)), "sample": shares(lambda: side.sample(args.calls)),
                        "forward_gflop": forward_gflop(side, batch)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps({"threads": torch.get_num_threads(), "batch": batch, **result}, indent=2))
    parts = ("train", "sample")
    names = sorted({g for r in result.values() for part in parts for g in r[part]}, key=lambda g: -result["ddpmctl"]["train"].get(g, 0))
    print("One forward pass at batch " + str(batch) + ": " + ", ".join(f"{n} {r['forward_gflop']:.2f} GFLOP" for n, r in result.items()) + ".")
    print(f"Share of self CPU time, mnist16 default model, batch {batch}, {torch.get_num_threads()} threads.\n")
    print("| operator group | " + " | ".join(f"{n} {part}" for n in result for part in parts) + " |")
    print("|---|" + "---|" * (2 * len(result)))
    for g in names:
        print(f"| {g} | " + " | ".join(f"{result[n][part].get(g, 0.0):.1%}" for n in result for part in parts) + " |")


if __name__ == "__main__":
    main()
