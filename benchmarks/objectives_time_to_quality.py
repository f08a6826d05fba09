"""Issue 15: which training objective reaches phase-2 quality soonest on this CPU? Classifier FID
against training wall time for the MNIST 16x16 digit-0 model, same U-Net, same settings, for
DDPM's L_simple (today's default), min-SNR-gamma DDPM, EDM and flow matching, beside diffusers'
unconditional-training recipe (DDPMScheduler + UNet2DModel at the same size), one side after
the other on a quiet machine.

    python benchmarks/objectives_time_to_quality.py                     # 20 minutes a side, evaluations every 2 minutes
    python benchmarks/objectives_time_to_quality.py --minutes 3 --every-s 60 --n 300 --sides edm,flow   # a quick look
    python benchmarks/objectives_time_to_quality.py --marks 5,10,20 --samplers heun:18   # the issue's bars in 2 hours

Every ``--every-s`` seconds of training the clock stops and the side's EMA weights are scored:
``--n`` fixed-seed samples (the same noise for every side) with each sampler of ``--samplers``
(all at most 35 network evaluations), classifier FID against the held-out zeros (n = 980: all
of them), and the side's best sampler counts. Only training time is counted. Writes
benchmarks/out/objectives/{curves.json, curves.png} and prints the table for docs/benchmarks.md:
each side's classifier FID at 10 and 20 minutes, the time it took to reach diffusers' 20-minute
figure, and the time to reach 1.2 x the floor.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from ddpmctl import load_dataset, registry, speed
from ddpmctl.config import TrainSettings, saved
from ddpmctl.devices import fast_math, pick_device, set_threads, use_bf16
from ddpmctl.metrics.base import score
from ddpmctl.pipeline import Model, build_network, build_process, resolve, sample
from ddpmctl.record import DataInfo, RunRecord
from ddpmctl.session import loop_config, objective
from ddpmctl.training import Hooks, make_state, train
from time_to_quality import DiffusersSide

SIDES = {"ddpm": {"process": "ddpm"}, "min-snr": {"process": "ddpm", "loss_weighting": "min-snr"}, "edm": {"process": "edm"}, "flow": {"process": "flow"}}
SAMPLERS = "dpm-solver++:20,unipc:20,heun:18,ddim:35"  # NFE 20, 20, 35, 35


class Ours:
    """A ddpmctl objective on the phase-2 default U-Net and settings."""

    def __init__(self, name: str, ds, device, seed: int, max_steps: int, precision: str = "auto", compile: bool = False):
        s = resolve(saved(TrainSettings, dict(data="mnist16", data_options={"digits": "0"}, seed=seed, steps=max_steps,
                                              log_every=10**9, precision=precision, **SIDES[name])), ds)
        self.s = s.model_copy(update={"checkpoint_every": 10**9})
        self.loop = loop_config(self.s, self.s.batch_size, use_bf16(precision, device))  # as `ddpmctl train` chooses
        self.process = build_process(self.s)
        self.loss = objective(self.s, ds, self.process)
        torch.manual_seed(seed)
        self.state = make_state(build_network(self.s, ds.shape, 0), self.loop, device, seed, compile=compile)
        self.record, self.x, self.ds, self.device = RunRecord(self.s, DataInfo.of(ds)), ds.x.to(device), ds, device

    @property
    def step(self) -> int:
        return self.state.step

    def train(self, k: int) -> None:
        """``k`` more steps; past the schedule's end at 10% of the learning rate, where the cosine
        decay ends (training.lr_at), as diffusers' side goes on."""
        target = self.state.step + k
        loop = self.loop if target <= self.loop.steps else replace(self.loop, steps=target, lr=0.1 * self.loop.lr, lr_decay="none", warmup=0)
        train(self.state, self.loss, self.x, None, loop, Hooks(stop=lambda: self.state.step >= target))

    def model(self) -> Model:
        return Model(None, self.record, self.state.ema, self.process, self.state.step, self.device, _dataset=self.ds)


class Theirs:
    """diffusers' recipe (speed.Diffusers at ddpmctl's settings), sampled through ddpmctl's samplers."""

    def __init__(self, ds, device, seed: int, max_steps: int, bf16: bool):
        ours = Ours("ddpm", ds, device, seed, max_steps, "fp32")
        self.side, self.record, self.process, self.ds, self.device = DiffusersSide(ours.x, ours.loop, seed, device, bf16), ours.record, ours.process, ds, device

    @property
    def step(self) -> int:
        return self.side.step

    def train(self, k: int) -> None:
        self.side.train(k)

    def model(self) -> Model:
        return Model(None, self.record, self.side.ema_net(), self.process, self.side.step, self.device, _dataset=self.ds)


def evaluate(side, samplers, n: int, metric) -> dict:
    """Classifier FID of each sampler's fixed-seed samples of the EMA weights."""
    fn, opts = metric
    model, out = side.model(), {}
    model.net.eval()
    for name, steps in samplers:
        x, rec = sample(model, n, name, steps, seed=0, batch_size=1024)
        result = score(fn, x, model.dataset(), opts.model_dump())
        out[f"{name}:{steps}"] = {"cfid": result.values["classifier-fid"], "floor": result.floor["classifier-fid"], "nfe": rec["nfe"]}
    return out


def run_side(name, ds, device, args, samplers, metric) -> list[dict]:
    if name == "diffusers":
        side = Theirs(ds, device, args.seed, args.max_steps, args.theirs_precision == "bf16")
    else:
        side = Ours(name, ds, device, args.seed, args.max_steps, args.precision, args.compile)
    curve, clock = [], 0.0
    marks = [60 * float(m) for m in args.marks.split(",")] if args.marks else []
    next_eval = marks.pop(0) if marks else args.every_s
    while clock < args.minutes * 60:
        clock += speed.timed(lambda: side.train(args.chunk), device)
        if clock >= next_eval or clock >= args.minutes * 60:
            scores = evaluate(side, samplers, args.n, metric)
            best = min(scores.values(), key=lambda v: v["cfid"])
            curve.append({"train_s": round(clock, 1), "step": side.step, "best": best, "samplers": scores})
            print(f"{name}: {clock / 60:.1f} min, step {side.step}, best classifier FID {best['cfid']:.3f} (floor {best['floor']:.3f})", flush=True)
            next_eval = marks.pop(0) if marks else (math.inf if args.marks else next_eval + args.every_s)
    return curve


def at(curve: list[dict], seconds: float) -> float:
    """The best classifier FID of the evaluation made when the training clock passed ``seconds``
    (evaluations run at the first look at the clock after each mark)."""
    seen = [p["best"]["cfid"] for p in curve if p["train_s"] >= seconds - 1e-6]
    return seen[0] if seen else math.nan


def reached(curve: list[dict], value: float):
    return next((p["train_s"] for p in curve if p["best"]["cfid"] <= value), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", default="ddpm,min-snr,edm,flow,diffusers")
    p.add_argument("--minutes", type=float, default=20.0, help="training wall time of each side")
    p.add_argument("--every-s", type=float, default=120.0, help="seconds of training between evaluations")
    p.add_argument("--marks", default=None, help="training minutes to evaluate at, comma-separated (instead of --every-s), e.g. 5,10,20")
    p.add_argument("--chunk", type=int, default=25, help="training steps between looks at the clock")
    p.add_argument("--max-steps", type=int, default=5000, help="the learning-rate schedule's length (cosine decay)")
    p.add_argument("--precision", default="auto", help="ddpmctl's sides: auto (as `ddpmctl train`: bf16 on CUDA and on CPUs with AMX), fp32 or bf16")
    p.add_argument("--compile", action="store_true", help="ddpmctl's sides: torch.compile the network (the compilation counts as training time)")
    p.add_argument("--theirs-precision", default="fp32", help="diffusers' side: fp32 (its example's default, --mixed_precision no) or bf16")
    p.add_argument("--n", type=int, default=980, help="samples per evaluation (980: as many as held-out zeros)")
    p.add_argument("--samplers", default=SAMPLERS, help="SAMPLER:STEPS, comma-separated; each side's best counts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/objectives"))
    p.add_argument("--table", type=Path, default=None, help="only print the table (at --minutes) of a curves.json written before, and redraw its plot beside it")
    args = p.parse_args()
    if args.table is not None:
        saved_run = json.loads(args.table.read_text())
        _plot(saved_run["curves"], args.table.with_suffix(".png"))
        print_table(saved_run["curves"], args.minutes)
        return

    set_threads(args.threads)
    device = pick_device("auto")
    fast_math(device)
    ds = load_dataset("mnist16", digits="0")
    samplers = [(s.split(":")[0], int(s.split(":")[1])) for s in args.samplers.split(",")]
    metric = registry.resolve("metric", "classifier-fid", None)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"settings": {**vars(args), "out": str(args.out)}, "environment": speed.environment(device), "curves": {}}
    for name in args.sides.split(","):  # saved after each side: a long run stopped early keeps what it measured
        record["curves"][name] = run_side(name, ds, device, args, samplers, metric)
        (args.out / "curves.json").write_text(json.dumps(record, indent=2))
    curves = record["curves"]
    _plot(curves, args.out / "curves.png")
    print_table(curves, args.minutes)
    print(f"saved {args.out / 'curves.json'} and {args.out / 'curves.png'}")


def print_table(curves: dict, minutes: float) -> None:
    horizon, half, quarter = minutes * 60, minutes * 30, minutes * 15
    theirs = at(curves["diffusers"], horizon) if "diffusers" in curves else None
    floor = next(iter(curves.values()))[-1]["best"]["floor"]
    print(f"\n| side | classifier FID at {quarter / 60:g} min | at {half / 60:g} min | at {horizon / 60:g} min | time to diffusers' {horizon / 60:g}-min figure (s) | time to 1.2 x floor (s) |")
    print("|---|---|---|---|---|---|")
    for name, c in curves.items():
        to_theirs = reached(c, theirs) if theirs is not None else None
        print(f"| {name} | {at(c, quarter):.3f} | {at(c, half):.3f} | {at(c, horizon):.3f} | {to_theirs if to_theirs is not None else '-'} | {reached(c, 1.2 * floor) or 'not reached'} |")
    print(f"\nfloor (held-out zeros against training zeros): {floor:.3f}")


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        ax.plot([p["train_s"] / 60 for p in c], [p["best"]["cfid"] for p in c], marker="o", label=name)
    floor = next(iter(curves.values()))[-1]["best"]["floor"]
    ax.axhline(floor, color="gray", ls="--", lw=1, label="floor")
    ax.axhline(1.2 * floor, color="gray", ls=":", lw=1, label="1.2 x floor")
    ax.set_yscale("log")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylabel("classifier FID (best sampler, <= 35 NFE)")
    ax.legend()
    ax.set_title("MNIST 16x16 digit 0: quality against training time, by objective")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
