"""`ddpmctl train`: build everything from the config, then run the loop with a progress bar."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ddpmctl import __version__, registry
from ddpmctl.cli.common import console, parse_options
from ddpmctl.config import RESUMABLE, TrainSettings, load_settings
from ddpmctl.diffusion import DiffusionLoss, HybridLoss
from ddpmctl.errors import ConfigError, DataError, RunError
from ddpmctl.devices import pick_device
from ddpmctl.pipeline import build_dataset, build_network, build_schedule, plugin_record, resolve, run_name, versions
from ddpmctl.run import RunDir
from ddpmctl.training import Hooks, LoopConfig, make_state, train as train_loop


def train(
    data: Annotated[Optional[str], typer.Option(help="Dataset plugin (see `ddpmctl plugins list`).")] = None,
    network: Annotated[Optional[str], typer.Option(help="Network plugin (default: mlp for 2-D, unet for images).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Noise schedule plugin: linear, cosine, ...")] = None,
    prediction: Annotated[Optional[str], typer.Option(help="What the network predicts: eps, x0 or v.")] = None,
    cond: Annotated[Optional[str], typer.Option(help="none, or class for a class-conditional model.")] = None,
    learn_sigma: Annotated[Optional[bool], typer.Option("--learn-sigma/--no-learn-sigma", help="Also learn the variance (hybrid loss, Nichol & Dhariwal 2021).")] = None,
    vlb_weight: Annotated[Optional[float], typer.Option(help="lambda of L_simple + lambda L_vlb with --learn-sigma (default 0.001).")] = None,
    digits: Annotated[Optional[str], typer.Option(help="Digit subset for MNIST-like data, e.g. 0 or 0,1,7.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training iterations.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per iteration.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of weights, batches and noise.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default: <data>-<date>-<time>).")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Where run directories are made.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Iterations between checkpoints.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Plugin option KIND.KEY=VALUE, KIND one of data, network, schedule (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (below env and flags).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this run directory from its last good checkpoint.")] = None,
):
    """Train a diffusion model; writes runs/<name>/ with config, checkpoints, metrics and plots."""
    opts = parse_options(option, kinds=("data", "network", "schedule"))
    if digits is not None:
        opts["data"]["digits"] = digits
    flags = dict(
        data=data, network=network, schedule=schedule, prediction=prediction, cond=cond, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, name=name, runs_dir=runs_dir, device=device,
        checkpoint_every=checkpoint_every, learn_sigma=learn_sigma, vlb_weight=vlb_weight,
        data_options=opts["data"] or None, network_options=opts["network"] or None, schedule_options=opts["schedule"] or None,
    )

    run: RunDir | None = None
    if resume is not None:
        run = RunDir.open(resume)
        saved = run.record["config"]
        s = load_settings(TrainSettings, config, base=saved, **flags)
        now = s.model_dump(mode="json")
        diff = [k for k in now if k not in RESUMABLE and now[k] != saved.get(k, TrainSettings.model_fields[k].get_default(call_default_factory=True))]
        if diff:
            what = "; ".join(f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in diff)
            raise ConfigError(f"cannot resume {run.path} with a different config ({what}); drop those settings or start a new run with --name.")
    else:
        s = load_settings(TrainSettings, config, **flags)

    if s.data_dir is not None:  # the setting (TOML, env or flag) is where datasets look
        os.environ["DDPMCTL_DATA_DIR"] = str(s.data_dir)
    # Names and options are checked before anything heavy is built.
    registry.validate_options("dataset", s.data, s.data_options)
    registry.validate_options("schedule", s.schedule, s.schedule_options)
    if s.network is not None:
        registry.validate_options("network", s.network, s.network_options)
    dev = pick_device(s.device)
    ds = build_dataset(s.data, s.data_options)
    s = resolve(s, ds)
    registry.validate_options("network", s.network, s.network_options)
    if s.cond == "class" and (ds.y is None or ds.num_classes == 0):
        raise DataError(f"dataset {s.data!r} has no class labels, so --cond class cannot be used; drop --cond.")
    cfg = s.model_dump(mode="json")

    torch.manual_seed(s.seed)
    net = build_network(cfg, ds.shape, ds.num_classes)
    schedule = build_schedule(cfg)
    loop = LoopConfig(
        steps=s.steps, batch_size=s.batch_size, lr=s.lr, warmup=s.warmup, lr_decay=s.lr_decay,
        weight_decay=s.weight_decay, ema_decay=s.ema_decay, grad_clip=s.grad_clip,
        log_every=s.log_every, checkpoint_every=s.checkpoint_every,
    )
    state = make_state(net, loop, dev, s.seed)
    record = {
        "config": cfg,
        "data": {"shape": list(ds.shape), "num_classes": ds.num_classes, "kind": ds.kind, "size": len(ds),
                 "absmax": round(float(ds.x.abs().max()), 4)},
        "plugins": plugin_record(s),
        "versions": versions(),
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    if run is not None:
        run.remove_partial_writes()  # temporary files of a process killed mid-write
    if run is None:
        run = RunDir.create(s.runs_dir / run_name(s), record)
    elif not run.checkpoints():  # killed before its first checkpoint: start again from step 0
        run.truncate_metrics(0)
        console.print(f"resuming {run.path}: no checkpoint was written yet, starting from step 0")
    else:
        tensors, meta, path, skipped = run.load_checkpoint()
        for msg in skipped:
            console.print(f"[yellow]skipped a damaged checkpoint:[/yellow] {msg}")
        if meta.get("config", {}).get("network_options") != cfg["network_options"] or meta.get("config", {}).get("network") != cfg["network"]:
            raise ConfigError(f"checkpoint {path} was made by a different network config; it cannot be resumed with this one.")
        try:
            state.restore(tensors, meta)
        except (RuntimeError, KeyError) as exc:
            raise ConfigError(f"checkpoint {path} does not fit the network of this config ({str(exc).splitlines()[0]}).") from None
        run.truncate_metrics(state.step)
        run.write_record({**run.record, "config": cfg})
        if state.step >= s.steps:
            raise RunError(f"run {run.path} already reached step {state.step} of {s.steps}; pass a larger --steps to train further.")
        console.print(f"resuming {run.path} from {path.name} (step {state.step})")

    console.print(f"[bold]run[/bold] {run.path}  ({record['parameters']:,} parameters, device {dev})")
    console.print_json(json.dumps(cfg))

    x = ds.x.to(dev)
    y = ds.y.to(dev) if (s.cond == "class" and ds.y is not None) else None
    loss_fn = DiffusionLoss(schedule, s.prediction, s.p_uncond if y is not None else 0.0, ds.num_classes)
    if s.learn_sigma:  # t = 1 term of L_vlb: discretized for 8-bit images, a density for points
        decoder = "discretized" if ds.kind == "images" else "gaussian"
        loss_fn = HybridLoss(schedule, s.prediction, loss_fn.p_uncond, ds.num_classes, s.vlb_weight, decoder)
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # a second Ctrl-C: leave at once
            raise KeyboardInterrupt
        stop["signal"] = signum

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    start_step, t0 = state.step, time.perf_counter()
    meta = {"config": cfg, "plugins": record["plugins"], "versions": record["versions"]}
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} it/s"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("train", total=s.steps, completed=state.step, loss="-", rate="-")

            def log(rec):
                rec = {**rec, "time": round(time.perf_counter() - t0, 3)}
                run.log(rec)
                rate = (rec["step"] - start_step) / max(rec["time"], 1e-9)
                bar.update(task, loss=f"{rec['loss']:.4f}", rate=f"{rate:.0f}")

            def save(step, _):
                tensors, extra = state.tensors()
                run.save_checkpoint(step, tensors, {**meta, **extra}, keep=s.keep_checkpoints)

            def grid(step):  # image runs: a sample grid from the EMA weights every sample_every steps
                if s.sample_every and ds.kind == "images" and (step % s.sample_every == 0 or step == s.steps):
                    from ddpmctl.grids import preview

                    preview(state.ema, schedule, s.prediction, ds.num_classes if y is not None else 0, ds.shape,
                            run.path / "grids" / f"step-{step:08d}.png", seed=s.seed)

            def progress(step):
                if step % 10 == 0 or step == s.steps:  # redrawing every step costs more than a 2-D step
                    bar.update(task, completed=step)
                grid(step)

            hooks = Hooks(log=log, checkpoint=save, progress=progress, stop=lambda: stop["signal"] is not None)
            why = train_loop(state, loss_fn, x, y, loop, hooks)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _plots(run)

    elapsed = time.perf_counter() - t0
    if why == "interrupted":
        console.print(f"[yellow]interrupted at step {state.step}[/yellow]; checkpoint saved. Resume with: ddpmctl train --resume {run.path}")
        raise typer.Exit(128 + int(stop["signal"]))
    console.print(f"[green]done[/green]: {s.steps} steps in {elapsed:.1f} s. Next: ddpmctl sample {run.path}")


def _plots(run: RunDir) -> None:
    from ddpmctl import plots

    records = run.metrics()
    if records:
        plots.loss_curve(records, run.path / "loss.png", title=f"training loss: {run.path.name}")
