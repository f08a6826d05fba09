"""Time to quality against diffusers (issue 6): training wall time until the MNIST 16x16 digit-0
model reaches the phase-2 bar (the project's digit classifier calls at least 97% of the samples
a zero), ddpmctl's loop against diffusers' at the same settings.

    python benchmarks/time_to_quality.py                      # every 250 steps, n = 500, up to 2500 steps
    python benchmarks/time_to_quality.py --every 100 --n 1000 --threads 2

Both sides start from the same real data (`mnist16 --digits 0`, the training split), the
resolved config of `ddpmctl train --data mnist16 --digits 0` (U-Net of 1.11M parameters, batch
64, AdamW lr 1e-3 with 200 warm-up steps and cosine decay to 10%, gradient clip 1, EMA 0.999,
linear schedule, T = 1000, eps-prediction) and the same seed:

    ddpmctl:   training.train, the loop `ddpmctl train` runs;
    diffusers: UNet2DModel at the same size (speed.diffusers_unet_config), DDPMScheduler.add_noise,
               MSE on eps, the same AdamW and learning-rate schedule, clip, EMAModel (warm-up on),
               as diffusers' examples/unconditional_image_generation/train_unconditional.py does.

Every ``--every`` steps the training clock stops and each side's EMA weights are scored the same
way: ``--n`` fixed-seed samples (DDIM, 50 steps, x0 clipped to [-1, 1], the same x_T for both
sides; what `ddpmctl train --eval-every` draws) through the class-coverage metric, whose share[0] is the share classified as a zero.
Only training time is counted. Writes benchmarks/out/time-to-quality/{curves.json, curves.png}
and prints the table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from ddpmctl import load_dataset, speed
from ddpmctl.config import TrainSettings, saved
from ddpmctl.convergence import watch
from ddpmctl.devices import fast_math, pick_device, set_threads
from ddpmctl.pipeline import Model, build_network, build_process, resolve
from ddpmctl.record import DataInfo, RunRecord
from ddpmctl.session import loop_config, objective
from ddpmctl.training import Hooks, LoopConfig, make_state, train


class DiffusersEps(torch.nn.Module):
    """diffusers' UNet2DModel behind ddpmctl's network signature net(x_t, t, y) -> eps_hat."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, y=None):
        return self.unet(x, t).sample


class DiffusersSide(speed.Diffusers):
    """speed.Diffusers on the real data at ddpmctl's settings, and its EMA weights as a ddpmctl network."""

    def __init__(self, x: torch.Tensor, loop: LoopConfig, seed: int, device: torch.device, bf16: bool = False):
        super().__init__("mnist16", loop.batch_size, device, bf16=bf16, seed=seed, x=x, loop=loop)
        self.eval_unet = copy.deepcopy(self.unet).eval().requires_grad_(False)

    def ema_net(self) -> torch.nn.Module:
        self.ema.copy_to(self.eval_unet.parameters())
        return DiffusersEps(self.eval_unet)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, default=250, help="training steps between evaluations")
    p.add_argument("--max-steps", type=int, default=2500, help="stop a side here if it has not reached the bar")
    p.add_argument("--n", type=int, default=500, help="samples per evaluation")
    p.add_argument("--target", type=float, default=0.97, help="share classified as zero that counts as reached")
    p.add_argument("--continue-after", action="store_true", help="train both sides to --max-steps (the whole curves)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/time-to-quality"))
    args = p.parse_args()

    set_threads(args.threads)
    device = pick_device("auto")
    fast_math(device)
    ds = load_dataset("mnist16", digits="0")
    # The resolved config of `ddpmctl train --data mnist16 --digits 0`, evaluated as --eval-every does.
    s = resolve(saved(TrainSettings, dict(data="mnist16", data_options={"digits": "0"}, process="ddpm", seed=args.seed, eval_every=args.every, log_every=10**9,
                                          eval_metric="class-coverage", eval_n=args.n, eval_sampler="ddim", eval_steps=50)), ds)
    s = s.model_copy(update={"checkpoint_every": 10**9})
    cfg = s.model_dump(mode="json")
    loop = loop_config(s, s.batch_size)
    x = ds.x.to(device)
    process = build_process(s)
    record = RunRecord(s, DataInfo.of(ds))
    evaluator = watch(s, ds).evaluator  # what `ddpmctl train --eval-every` scores

    torch.manual_seed(args.seed)
    ours = make_state(build_network(s, ds.shape, 0), loop, device, args.seed)
    loss = objective(s, ds, process)
    theirs = DiffusersSide(x, loop, args.seed, device)
    print(f"parameters: ddpmctl {sum(p.numel() for p in ours.net.parameters()):,}, diffusers {sum(p.numel() for p in theirs.unet.parameters()):,}", flush=True)

    sides = {
        "ddpmctl": (lambda k: _ours_chunk(ours, loss, x, loop, k),
                    lambda: Model(None, record, ours.ema, process, ours.step, device, _dataset=ds)),
        "diffusers": (theirs.train, lambda: Model(None, record, theirs.ema_net(), process, theirs.step, device, _dataset=ds)),
    }
    curves = {name: [] for name in sides}
    reached = {}
    clock = {name: 0.0 for name in sides}
    step = 0
    while step < args.max_steps and (args.continue_after or len(reached) < len(sides)):
        k = min(args.every, args.max_steps - step)
        for name, (train_k, model) in sides.items():  # interleaved, so that other load slows both alike
            if name in reached and not args.continue_after:
                continue
            clock[name] += speed.timed(lambda: train_k(k), device)
            rec, _ = evaluator(model())
            share = rec["values"].get("share[0]", float("nan"))
            curves[name].append({"step": step + k, "train_s": round(clock[name], 2), "share0": share, "eval_s": rec.get("eval_s")})
            print(f"{name}: step {step + k}, training {clock[name]:.1f} s, share classified 0: {share:.3f}", flush=True)
            if share >= args.target and name not in reached:
                reached[name] = curves[name][-1]
        step += k

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"settings": {**vars(args), "out": str(args.out)}, "environment": speed.environment(device), "config": cfg,
              "evaluation": {"metric": "class-coverage share[0]", "n": args.n, "sampler": "ddim", "steps": 50, "seed": args.seed},
              "curves": curves, "reached": reached}
    (args.out / "curves.json").write_text(json.dumps(record, indent=2))
    _plot(curves, args.target, args.out / "curves.png")
    print(f"\n| side | steps to >= {args.target:.0%} zeros | training time to it (s) |\n|---|---|---|")
    for name in sides:
        r = reached.get(name)
        print(f"| {name} | {r['step'] if r else 'not reached'} | {r['train_s'] if r else '-'} |")
    if len(reached) == 2:
        print(f"\nddpmctl reached the bar in {reached['ddpmctl']['train_s'] / reached['diffusers']['train_s']:.2f}x diffusers' training time.")
    print(f"saved {args.out / 'curves.json'} and {args.out / 'curves.png'}")


def _ours_chunk(state, loss, x, loop: LoopConfig, k: int) -> None:
    """k more steps of ddpmctl's loop; the learning-rate schedule runs over loop.steps, as in
    `ddpmctl train`, and the loop's stop hook ends the chunk."""
    target = state.step + k
    train(state, loss, x, None, loop, Hooks(stop=lambda: state.step >= target))


def _plot(curves: dict, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, c in curves.items():
        axes[0].plot([r["step"] for r in c], [r["share0"] for r in c], marker="o", label=name)
        axes[1].plot([r["train_s"] for r in c], [r["share0"] for r in c], marker="o", label=name)
    for ax, xl in zip(axes, ("training steps", "training wall time (s)")):
        ax.axhline(target, color="gray", ls="--", lw=1)
        ax.set_xlabel(xl)
        ax.set_ylabel("share classified as 0")
        ax.legend()
    fig.suptitle("MNIST 16x16 digit 0: time to quality, ddpmctl against diffusers (same settings)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
