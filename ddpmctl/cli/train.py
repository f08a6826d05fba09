"""`ddpmctl train`: parse the flags, run a training session (session.py) with a progress bar,
and turn Ctrl-C / SIGTERM into a checkpoint and a clean stop."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ddpmctl.cli.common import console, parse_options
from ddpmctl.cli.render import Rich

if TYPE_CHECKING:
    from ddpmctl.session import Session


def train(
    data: Annotated[Optional[str], typer.Option(help="Dataset plugin (see `ddpmctl plugins list`).")] = None,
    network: Annotated[Optional[str], typer.Option(help="Network plugin (default: mlp for 2-D, unet for images).")] = None,
    process: Annotated[Optional[str], typer.Option(help="Diffusion process, the training objective: ddpm, edm (Karras et al. 2022) or flow (flow matching). Default: edm for images, ddpm for 2-D points and whenever a ddpm-only option (--learn-sigma, --loss-weighting, --prediction, --schedule) is given.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Train a few-step model from scratch with this method: meanflow (one-step, flow process) or consistency (consistency training); from a trained run, use `ddpmctl distill`.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Noise schedule plugin of the ddpm process: linear, cosine, ...")] = None,
    prediction: Annotated[Optional[str], typer.Option(help="What the network predicts: eps, x0 or v.")] = None,
    cond: Annotated[Optional[str], typer.Option(help="none, or class for a class-conditional model.")] = None,
    learn_sigma: Annotated[Optional[bool], typer.Option("--learn-sigma/--no-learn-sigma", help="Also learn the variance (hybrid loss, Nichol & Dhariwal 2021).")] = None,
    vlb_weight: Annotated[Optional[float], typer.Option(help="lambda of L_simple + lambda L_vlb with --learn-sigma (default 0.001).")] = None,
    loss_weighting: Annotated[Optional[str], typer.Option(help="none (L_simple) or min-snr (min-SNR-gamma, Hang et al. 2023; gamma from snr_gamma, default 5).")] = None,
    digits: Annotated[Optional[str], typer.Option(help="Digit subset for MNIST-like data, e.g. 0 or 0,1,7.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training iterations.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per iteration.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of weights, batches and noise.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default: <data>-<date>-<time>).")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Where run directories are made.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Iterations between checkpoints.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Measure quality every N steps: fixed-seed samples of the EMA weights (fast sampler), scored into metrics.jsonl (0: never).")] = None,
    eval_metric: Annotated[Optional[str], typer.Option(help="Metric of --eval-every (default: wasserstein for 2-D, classifier-fid for 1-channel images, else fid).")] = None,
    eval_n: Annotated[Optional[int], typer.Option(help="Samples per evaluation (default: 500 for 2-D, 256 for images).")] = None,
    until_loss: Annotated[Optional[float], typer.Option(help="Stop when the smoothed loss (mean of the last 5 logged) is at most X (0: off).")] = None,
    until_metric: Annotated[Optional[str], typer.Option(help="Stop when an evaluation reaches NAME<=X or NAME>=X, e.g. wasserstein<=0.1 (none: off).")] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop when the run's wall time reaches this: seconds, or 90s, 15m, 1h (0: no limit).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Plugin option KIND.KEY=VALUE, KIND one of data, network, schedule, process, method, eval (the --eval-metric), tracker (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (below env and flags).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this run directory from its last good checkpoint.")] = None,
    latent: Annotated[Optional[Path], typer.Option(help="Latent diffusion: train on the latents of this autoencoder run (`ddpmctl autoencoder train`); samples are decoded to images.")] = None,
    on_nonfinite: Annotated[Optional[str], typer.Option(help="stop (default): a NaN/inf loss or gradient ends the run, keeping the last good checkpoint; skip: drop that step and go on.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads of each process (default: torch's, or the cores divided among the processes of a torchrun launch).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Run the network through torch.compile: a slow first step, then faster ones.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 autocast for images on CPUs with AMX; else float32, with TF32 on CUDA), fp32 or bf16.")] = None,
    tracker: Annotated[Optional[str], typer.Option(help="Also send the metrics.jsonl records and the sample grids to this experiment tracker: tensorboard (event files in RUN/tensorboard/; pip install \"ddpmctl[tensorboard]\"); none: off.")] = None,
):
    """Train a diffusion model; writes runs/<name>/ with config, checkpoints, metrics and plots."""
    from ddpmctl import distributed
    from ddpmctl.session import Session

    opts = parse_options(option, kinds=("data", "network", "schedule", "process", "method", "eval", "tracker"))
    if digits is not None:
        opts["data"]["digits"] = digits
    flags = dict(
        data=data, network=network, process=process, schedule=schedule, prediction=prediction, cond=cond, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, name=name, runs_dir=runs_dir, device=device,
        checkpoint_every=checkpoint_every, learn_sigma=learn_sigma, on_nonfinite=on_nonfinite, vlb_weight=vlb_weight, loss_weighting=loss_weighting,
        data_options=opts["data"] or None, network_options=opts["network"] or None, schedule_options=opts["schedule"] or None,
        process_options=opts["process"] or None, method=method, method_options=opts["method"] or None,
        eval_every=eval_every, eval_metric=eval_metric, eval_n=eval_n, eval_options=opts["eval"] or None,
        until_loss=until_loss, until_metric=until_metric, max_time=max_time,
        threads=threads, compile=compile, precision=precision, latent=latent, tracker=tracker, tracker_options=opts["tracker"] or None,
    )
    if not distributed.world_from_env().main:
        console.quiet = True  # rank 0 alone prints, draws the progress bar and writes
    events = Rich(console, transient=False)
    session = Session.prepare({k: v for k, v in flags.items() if v is not None}, config, resume, events)
    run_session(session, events)


def run_session(session: Session, events: Rich) -> None:
    """Show the run, train it under the progress bar, and say how it ended (`train`, `distill`)."""
    s, world = session.s, session.world
    for label, text in summary(session):
        console.print(f"[bold]{label:<9}[/bold] {text}", soft_wrap=True)
    if world.distributed:
        console.print(f"data-parallel: {world.size} processes x {session.rank_batch} examples = batch {s.batch_size}")
    with signals() as caught, events:
        outcome = session.run(stop=lambda: caught["signal"] is not None)
    if outcome.reason == "interrupted":
        console.print(f"[yellow]interrupted at step {outcome.step}[/yellow]; checkpoint saved. Resume with: ddpmctl train --resume {outcome.run}")
        raise typer.Exit(128 + int(caught["signal"]))
    if outcome.reason != "steps":
        console.print(f"[green]stopped[/green] at step {outcome.step} of {outcome.steps} ({outcome.reason}: {outcome.explanation}); checkpoint saved. Next: ddpmctl sample {outcome.run}")
        return
    console.print(f"[green]done[/green]: {outcome.steps} steps in {outcome.seconds:.1f} s. Next: ddpmctl sample {outcome.run}")


def summary(session: Session) -> list[tuple[str, str]]:
    """What is about to be trained, in a few labelled lines; every setting is in config.json."""
    import torch

    s, ds = session.s, session.ds
    shape = "x".join(map(str, ds.shape))
    data = f"{s.data}: {len(ds):,} " + ("2-D points" if ds.kind == "points" and ds.shape == (2,) else f"{ds.kind} of shape {shape}")
    if ds.num_classes and s.cond == "class":
        data += f", {ds.num_classes} classes (class-conditional)"
    if s.latent is not None:
        data += f", trained on the latents of {s.latent}"
    objective = s.process + (f" ({s.prediction} prediction, {s.schedule} schedule)" if s.process == "ddpm" else "")
    objective += "".join(part for cond, part in ((s.method, f", method {s.method}"), (s.learn_sigma, ", learned variance"),
                                                 (s.loss_weighting != "none", f", {s.loss_weighting} loss weighting")) if cond)
    return [
        ("run", f"{session.run_dir.path}  (every setting in {session.run_dir.path / 'config.json'})"),
        ("data", data),
        ("network", f"{s.network}, {session.record.parameters:,} parameters"),
        ("objective", objective),
        ("training", f"{s.steps:,} steps, batch {s.batch_size}, lr {s.lr:g}"),
        ("device", f"{session.device}, {torch.get_num_threads()} threads" + (", bf16" if session.loop.bf16 else "")),
    ]


@contextlib.contextmanager
def signals():
    """SIGINT and SIGTERM ask the session to stop at the next step (it saves a checkpoint). A
    second Ctrl-C leaves at once; one within a second of the first is the same request arriving
    twice (under torchrun from the terminal and from the launcher)."""
    caught: dict = {"signal": None}

    def on_signal(signum, frame):
        if caught["signal"] is not None and time.monotonic() - caught["at"] > 1.0:
            raise KeyboardInterrupt
        caught.setdefault("at", time.monotonic())
        caught["signal"] = caught["signal"] or signum

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
