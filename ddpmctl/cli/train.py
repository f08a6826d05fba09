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

from ddpmctl import distributed, registry
from ddpmctl.cli.common import console, parse_options
from ddpmctl.config import RESUMABLE, TrainSettings, load_settings
from ddpmctl.diffusion import DiffusionLoss, HybridLoss
from ddpmctl.errors import ConfigError, DataError, RunError
from ddpmctl.devices import channels_last_pays, fast_math, pick_device, set_threads, use_bf16
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.pipeline import Model, build_dataset, build_network, build_schedule, plugin_record, provenance_changes, resolve, run_name, versions
from ddpmctl.run import RunDir
from ddpmctl import convergence
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
    eval_every: Annotated[Optional[int], typer.Option(help="Measure quality every N steps: fixed-seed samples of the EMA weights (fast sampler), scored into metrics.jsonl (0: never).")] = None,
    eval_metric: Annotated[Optional[str], typer.Option(help="Metric of --eval-every (default: wasserstein for 2-D, classifier-fid for 1-channel images, else fid).")] = None,
    eval_n: Annotated[Optional[int], typer.Option(help="Samples per evaluation (default: 500 for 2-D, 256 for images).")] = None,
    until_loss: Annotated[Optional[float], typer.Option(help="Stop when the smoothed loss (mean of the last 5 logged) is at most X (0: off).")] = None,
    until_metric: Annotated[Optional[str], typer.Option(help="Stop when an evaluation reaches NAME<=X or NAME>=X, e.g. wasserstein<=0.1 (none: off).")] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop when the run's wall time reaches this: seconds, or 90s, 15m, 1h (0: no limit).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Plugin option KIND.KEY=VALUE, KIND one of data, network, schedule, eval (the --eval-metric) (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (below env and flags).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this run directory from its last good checkpoint.")] = None,
    on_nonfinite: Annotated[Optional[str], typer.Option(help="stop (default): a NaN/inf loss or gradient ends the run, keeping the last good checkpoint; skip: drop that step and go on.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads of each process (default: torch's, or the cores divided among the processes of a torchrun launch).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Run the network through torch.compile: a slow first step, then faster ones.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 autocast on CUDA GPUs that support it, else float32), fp32 or bf16.")] = None,
):
    """Train a diffusion model; writes runs/<name>/ with config, checkpoints, metrics and plots."""
    opts = parse_options(option, kinds=("data", "network", "schedule", "eval"))
    if digits is not None:
        opts["data"]["digits"] = digits
    flags = dict(
        data=data, network=network, schedule=schedule, prediction=prediction, cond=cond, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, name=name, runs_dir=runs_dir, device=device,
        checkpoint_every=checkpoint_every, learn_sigma=learn_sigma, on_nonfinite=on_nonfinite, vlb_weight=vlb_weight,
        data_options=opts["data"] or None, network_options=opts["network"] or None, schedule_options=opts["schedule"] or None,
        eval_every=eval_every, eval_metric=eval_metric, eval_n=eval_n, eval_options=opts["eval"] or None,
        until_loss=until_loss, until_metric=until_metric, max_time=max_time,
        threads=threads, compile=compile, precision=precision,
    )
    world = distributed.world_from_env()  # torchrun: this process's rank; else one process
    if not world.main:
        console.quiet = True  # rank 0 alone prints, draws the progress bar and writes

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
    set_threads(s.threads, world.local_size)
    dev = pick_device(s.device)
    ds = build_dataset(s.data, s.data_options)
    s = resolve(s, ds)
    rank_batch = distributed.rank_batch(s.batch_size, world)  # the global batch, split among processes
    registry.validate_options("network", s.network, s.network_options)
    if s.cond == "class" and (ds.y is None or ds.num_classes == 0):
        raise DataError(f"dataset {s.data!r} has no class labels, so --cond class cannot be used; drop --cond.")
    watch = convergence.watch(s, ds)  # evaluations and stop criteria, checked before anything is trained
    cfg = s.model_dump(mode="json")

    dev = distributed.init(world, dev)  # joins the process group; cuda:LOCAL_RANK on CUDA
    fast_math(dev)
    torch.manual_seed(s.seed)
    net = build_network(cfg, ds.shape, ds.num_classes)
    schedule = build_schedule(cfg)
    loop = LoopConfig(
        steps=s.steps, batch_size=rank_batch, lr=s.lr, bf16=use_bf16(s.precision, dev), warmup=s.warmup, lr_decay=s.lr_decay,
        weight_decay=s.weight_decay, ema_decay=s.ema_decay, grad_clip=s.grad_clip,
        log_every=s.log_every, checkpoint_every=s.checkpoint_every, skip_nonfinite=s.on_nonfinite == "skip",
    )
    channels_last = ds.kind == "images" and channels_last_pays(dev, training=True)
    state = make_state(net, loop, dev, s.seed, channels_last=channels_last, compile=s.compile)
    record = {
        "config": cfg,
        "data": {"shape": list(ds.shape), "num_classes": ds.num_classes, "kind": ds.kind, "size": len(ds),
                 "absmax": round(float(ds.x.abs().max()), 4)},
        "plugins": plugin_record(s),
        "versions": versions(),
        "parameters": sum(p.numel() for p in net.parameters()),
    }

    def measure(step: int):  # quality of the EMA weights now: (metrics.jsonl record, samples)
        return watch.evaluator(Model(run, cfg, record["data"], state.ema, schedule, step, dev, _dataset=ds))

    first = None
    if watch.evaluator is not None and run is None and world.main:  # before the run directory exists: a metric that cannot read this data fails here
        first = measure(0)
        convergence.check_threshold(watch.criteria.until_metric, first[0])
    if run is not None and world.main:
        run.remove_partial_writes()  # temporary files of a process killed mid-write
    if run is None:  # rank 0 names and makes the run directory; the other ranks are told where it is
        run = RunDir.create(s.runs_dir / run_name(s), record) if world.main else None
        run = RunDir(Path(distributed.broadcast_text(str(run.path) if run else None)))
    elif not run.checkpoints():  # killed before its first checkpoint: start again from step 0
        if world.main:
            run.truncate_metrics(0)
        console.print(f"resuming {run.path}: no checkpoint was written yet, starting from step 0")
    else:
        tensors, meta, path, skipped = run.load_checkpoint()
        for msg in skipped:
            console.print(f"[yellow]skipped a damaged checkpoint:[/yellow] {msg}")
        if changes := provenance_changes(meta):
            console.print(f"[yellow]note:[/yellow] {path.name} was written with other software: " + "; ".join(changes) + ".", soft_wrap=True)
        if meta.get("config", {}).get("network_options") != cfg["network_options"] or meta.get("config", {}).get("network") != cfg["network"]:
            raise ConfigError(f"checkpoint {path} was made by a different network config; it cannot be resumed with this one.")
        try:
            state.restore(tensors, meta)
        except (RuntimeError, KeyError) as exc:
            raise ConfigError(f"checkpoint {path} does not fit the network of this config ({str(exc).splitlines()[0]}).") from None
        if world.main:
            run.truncate_metrics(state.step)
            run.write_record({**run.record, "config": cfg})
        if state.step >= s.steps:
            raise RunError(f"run {run.path} already reached step {state.step} of {s.steps}; pass a larger --steps to train further.")
        console.print(f"resuming {run.path} from {path.name} (step {state.step})")

    distributed.barrier()  # the other ranks read the history after rank 0 has cut it back
    history = run.metrics()
    offset = max((r.get("time", 0.0) for r in history), default=0.0)  # wall time of earlier sessions
    for r in history:
        watch.criteria.on_record(r)
    watch.criteria.on_time(state.step, offset)
    if watch.criteria.reason:
        raise RunError(f"run {run.path} already met its stop criterion ({watch.criteria.explain()}); change it, or turn it off with 0 or none, to train further.")
    if watch.evaluator is not None and world.main and first is None and not any(r.get("event") == "eval" and r["step"] == state.step for r in history):
        first = measure(state.step)
        convergence.check_threshold(watch.criteria.until_metric, first[0])

    console.print(f"[bold]run[/bold] {run.path}  ({record['parameters']:,} parameters, device {dev}, {torch.get_num_threads()} threads)")
    if world.distributed:
        console.print(f"data-parallel: {world.size} processes x {rank_batch} examples = batch {s.batch_size}")
    console.print_json(json.dumps(cfg))

    x = ds.x.to(dev)
    y = ds.y.to(dev) if (s.cond == "class" and ds.y is not None) else None
    loss_fn = DiffusionLoss(schedule, s.prediction, s.p_uncond if y is not None else 0.0, ds.num_classes)
    if s.learn_sigma:  # t = 1 term of L_vlb: discretized for 8-bit images, a density for points
        decoder = "discretized" if ds.kind == "images" else "gaussian"
        loss_fn = HybridLoss(schedule, s.prediction, loss_fn.p_uncond, ds.num_classes, s.vlb_weight, decoder)
    stop = {"signal": None}

    def on_signal(signum, frame):
        # A second Ctrl-C leaves at once; one within a second of the first is the same request
        # arriving twice (under torchrun from the terminal and from the launcher).
        if stop["signal"] is not None and time.monotonic() - stop["at"] > 1.0:
            raise KeyboardInterrupt
        stop.setdefault("at", time.monotonic())
        stop["signal"] = stop["signal"] or signum

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    start_step, t0 = state.step, time.perf_counter()
    meta = {"config": cfg, "plugins": record["plugins"], "versions": record["versions"]}
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} it/s"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[quality]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("train", total=s.steps, completed=state.step, loss="-", rate="-", quality="")

            def log(rec):
                rec = {**rec, "time": round(offset + time.perf_counter() - t0, 3)}
                if world.main:
                    run.log(rec)
                watch.criteria.on_record(rec)
                if rec.get("event") == "skipped":
                    bar.console.print(f"[yellow]step {rec['step']}: skipped[/yellow] ({rec['reason']}; {rec['skipped_total']} so far)")
                    return
                rate = (rec["step"] - start_step) / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, loss=f"{rec['loss']:.4f}", rate=f"{rate:.0f}")

            def save(step, _):
                tensors, extra = state.tensors()  # every rank: the generator states are gathered
                if world.main:
                    run.save_checkpoint(step, tensors, {**meta, **extra}, keep=s.keep_checkpoints)

            def grid(step):  # image runs: a sample grid from the EMA weights every sample_every steps
                if world.main and s.sample_every and ds.kind == "images" and (step % s.sample_every == 0 or step == s.steps):
                    from ddpmctl.grids import preview

                    preview(state.ema, schedule, s.prediction, ds.num_classes if y is not None else 0, ds.shape,
                            run.path / "grids" / f"step-{step:08d}.png", seed=s.seed)

            def log_eval(rec, samples):  # an evaluation: its record, its samples (for the strip), the stop criteria
                rec = {**rec, "time": rec.get("time", round(offset + time.perf_counter() - t0, 3))}
                run.log(rec)
                if samples is not None:
                    convergence.save_samples(run.path, rec["step"], samples, watch.evaluator.labels, ds.kind)
                watch.criteria.on_record(rec)
                if rec["values"]:
                    key, value = next(iter(rec["values"].items()))
                    bar.update(task, quality=f"{key} {value:.4g}")

            def progress(step):
                if step % 10 == 0 or step == s.steps:  # redrawing every step costs more than a 2-D step
                    bar.update(task, completed=step)
                grid(step)
                if world.main and watch.every and (step % watch.every == 0 or step == s.steps):
                    log_eval(*measure(step))

            def should_stop():  # Ctrl-C / SIGTERM, or a stop criterion met
                watch.criteria.on_time(state.step, offset + time.perf_counter() - t0)
                return stop["signal"] is not None or watch.criteria.reason is not None

            if first is not None:
                log_eval({**first[0], "time": round(offset, 3)}, first[1])
            hooks = Hooks(log=log, checkpoint=save, progress=progress, stop=should_stop)
            why = train_loop(state, loss_fn, x, y, loop, hooks)
            ended = time.perf_counter()  # before the plots
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if world.main:
            convergence.write_plots(run)
        distributed.shutdown()

    elapsed = ended - t0
    reason = "steps" if why == "done" else ("interrupted" if stop["signal"] is not None else watch.criteria.reason)
    if world.main:
        atomic_write_bytes(run.path / "stop.json", json.dumps(watch.criteria.summary(reason, state.step, offset + elapsed), indent=2).encode())
    if reason == "interrupted":
        console.print(f"[yellow]interrupted at step {state.step}[/yellow]; checkpoint saved. Resume with: ddpmctl train --resume {run.path}")
        raise typer.Exit(128 + int(stop["signal"]))
    if reason != "steps":
        console.print(f"[green]stopped[/green] at step {state.step} of {s.steps} ({reason}: {watch.criteria.explain()}); checkpoint saved. Next: ddpmctl sample {run.path}")
        return
    console.print(f"[green]done[/green]: {s.steps} steps in {elapsed:.1f} s. Next: ddpmctl sample {run.path}")
