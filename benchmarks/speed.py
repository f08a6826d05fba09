"""Issue 6's speed figures: training and sampling throughput of the default networks, against
diffusers' UNet2DModel + DDPMScheduler at a matched size (the function behind `ddpmctl bench speed`).

    python benchmarks/speed.py                          # 2d, mnist16, rgb32; 1000-step sampling; 3 repeats
    python benchmarks/speed.py --model mnist16 --repeats 5
    python benchmarks/speed.py --ablation --nfe 100     # mnist16: channels-last and torch.compile, each on and off

Needs diffusers (`pip install 'ddpmctl[bench]'` or `pip install diffusers`). Repeats are interleaved (ours, theirs, ours,
theirs ...) so that other load slows both alike; ratios are medians of per-repeat ratios. Run it
on a quiet machine for absolute numbers. Results go to benchmarks/out/speed/ as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch

from ddpmctl import speed
from ddpmctl.devices import pick_device, set_threads


def ablation(settings: speed.Settings, device: torch.device) -> dict:
    """mnist16: ours with channels-last and compile on and off, each against diffusers, interleaved."""
    variants = {"eager NCHW": (False, False), "channels-last": (True, False), "channels-last + compile": (True, True)}
    if not settings.compile:
        variants.pop("channels-last + compile")
    batch = settings.batch_size or speed.MODELS["mnist16"]["batch_size"]
    sides = {name: speed.Ours("mnist16", batch, device, comp, False, channels_last=cl) for name, (cl, comp) in variants.items()}
    sides["diffusers"] = speed.Diffusers("mnist16", batch, device, False)
    for name, side in sides.items():
        print(f"warm-up {name}: {speed.timed(lambda: speed.warm_up(side, settings), device):.1f} s", flush=True)
    seconds = speed.interleaved(sides, settings, device, tick=lambda d: print(d, flush=True))
    train = {k: [settings.train_steps * batch / s for s in v] for k, v in seconds[0].items()}
    sample = {k: [batch / s for s in v] for k, v in seconds[1].items()}
    out = {}
    for name in variants:
        out[name] = {
            "train_images_per_s": statistics.median(train[name]), "sample_images_per_s": statistics.median(sample[name]),
            "train_ratio": statistics.median(a / b for a, b in zip(train[name], train["diffusers"])),
            "sample_ratio": statistics.median(a / b for a, b in zip(sample[name], sample["diffusers"])),
        }
    out["diffusers"] = {"train_images_per_s": statistics.median(train["diffusers"]), "sample_images_per_s": statistics.median(sample["diffusers"])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="2d,mnist16,rgb32", help="comma-separated: " + ", ".join(speed.MODELS))
    p.add_argument("--nfe", type=int, default=1000)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile ours")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 training where it pays (CUDA, AMX CPUs), fp32 sampling; bf16: both bf16")
    p.add_argument("--no-diffusers", action="store_true", help="time ddpmctl alone")
    p.add_argument("--ablation", action="store_true", help="mnist16 only: channels-last (and with --compile, compile) on and off")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/speed"))
    args = p.parse_args()

    set_threads(args.threads)
    device = pick_device(args.device)
    settings = speed.Settings(train_steps=args.train_steps, nfe=args.nfe, repeats=args.repeats, batch_size=args.batch_size,
                              compile=args.compile, precision=args.precision, vs=None if args.no_diffusers else "diffusers")
    env = speed.environment(device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        result = ablation(settings, device)
        record = {"environment": env, "settings": dataclasses.asdict(settings), "ablation": result}
        (args.out / "ablation.json").write_text(json.dumps(record, indent=2))
        lines = ["| mnist16, ours | train images/s | sample images/s | train vs diffusers | sample vs diffusers |", "|---|---|---|---|---|"]
        for name, r in result.items():
            lines.append(f"| {name} | {r['train_images_per_s']:.1f} | {r['sample_images_per_s']:.3g} | "
                         f"{r.get('train_ratio', 1.0):.2f}x | {r.get('sample_ratio', 1.0):.2f}x |")
        text = f"Device {env['device']}, {env['threads']} threads, NFE {settings.nfe}, {settings.repeats} interleaved repeats.\n\n" + "\n".join(lines) + "\n"
        (args.out / "ablation.md").write_text(text)
        print(text)
        return
    results = []
    for m in [s.strip() for s in args.model.split(",") if s.strip()]:
        s = dataclasses.replace(settings, vs=settings.vs if speed.has_counterpart(m) else None)
        results.append(speed.measure(m, s, device, tick=lambda d: print(d, flush=True)))
    record = {"environment": env, "settings": dataclasses.asdict(settings), "results": results}
    (args.out / "speed.json").write_text(json.dumps(record, indent=2))
    text = speed.markdown(results, env)
    (args.out / "speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
