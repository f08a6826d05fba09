"""A training session: settings -> a prepared run (new or resumed) -> the loop -> a stop record.

    session = Session.prepare({"data": "spiral", "steps": 2000}, events=events)   # checks, builds, opens
    outcome = session.run(stop=lambda: False)                                     # trains, writes stop.json

``prepare`` does every check before anything is trained: names and options, the resume
contract (a resumed run keeps every setting outside config.RESUMABLE, and its checkpoint must
fit its network), the evaluations and stop criteria, and a first evaluation of a new run before
its directory exists. ``run`` trains until the steps are done, a stop criterion is met or
``stop()`` says so (the CLI's signal handler); it writes checkpoints, metrics.jsonl, the
evaluations, plots and RUN/stop.json. Nothing here prints: it reports through ``events``.
Under torchrun every process runs a session; rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ddpmctl import convergence, distributed, registry, trackers
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.config import RESUMABLE, TrainSettings, load_settings, resumed
from ddpmctl.datasets.base import Dataset
from ddpmctl.devices import channels_last_pays, check_fits, fast_math, pick_device, set_threads, use_bf16
from ddpmctl.errors import ConfigError, DataError, RunError, WriteError
from ddpmctl.events import Events
from ddpmctl.grids import few_step_picture, preview
from ddpmctl.latent import COPY_NAME, Autoencoder, latent_dataset
from ddpmctl.methods import Method
from ddpmctl.pipeline import (Model, build_dataset, build_method, build_network, build_process, check_method, check_process, check_teacher, load_copy, load_model, INHERITED,
                              plugin_record, provenance_changes, resolve, run_name, start_from, versions)
from ddpmctl.processes import Process
from ddpmctl.record import DataInfo, RunRecord
from ddpmctl.run import RunDir, check_run_folder
from ddpmctl.training import Hooks, LoopConfig, TrainState, make_state, train as train_loop


def loop_config(s: TrainSettings, batch_size: int, bf16: bool = False) -> LoopConfig:
    """The training loop's settings from resolved ``s``; ``batch_size`` is this process's share."""
    return LoopConfig(
        steps=s.steps, batch_size=batch_size, lr=s.lr, bf16=bf16, warmup=s.warmup, lr_decay=s.lr_decay,
        weight_decay=s.weight_decay, ema_decay=s.ema_decay, grad_clip=s.grad_clip,
        log_every=s.log_every, checkpoint_every=s.checkpoint_every, skip_nonfinite=s.on_nonfinite == "skip",
    )


def objective(s: TrainSettings, ds: Dataset, process: Process, method: Optional[Method] = None, teacher: Optional[Model] = None):
    """The loss of resolved ``s``: a few-step ``method``'s (given its ``teacher``), else the
    process's own: for ddpm L_simple (DDPM Algorithm 1) or its min-SNR-gamma weighting, plus L_vlb
    for a learned variance (the hybrid loss); EDM's weighted denoising loss; the flow-matching loss."""
    p_uncond = s.p_uncond if (s.cond == "class" and ds.y is not None) else 0.0
    if method is not None:
        return method.loss(process, p_uncond, ds.num_classes, teacher, s.steps)
    gamma = s.snr_gamma if s.loss_weighting == "min-snr" else None
    # L_vlb's t = 1 term with a learned variance: discretized for 8-bit images, a density for points and latents.
    decoder = "discretized" if ds.kind == "images" else "gaussian"
    return process.loss(p_uncond, ds.num_classes, learn_sigma=s.learn_sigma, vlb_weight=s.vlb_weight, decoder=decoder, snr_gamma=gamma)


def settings(flags: dict, config_file: Optional[Path] = None, resume: Optional[Path] = None, base: Optional[dict] = None) -> tuple[TrainSettings, Optional[RunDir]]:
    """Settings of a new run (defaults < ``base`` < TOML < env < ``flags``), or of ``resume``d run
    (its saved config below those layers): a resumed run refuses any change outside config.RESUMABLE."""
    if resume is None:
        return load_settings(TrainSettings, config_file, base=base, **flags), None
    run = RunDir.open(resume)
    return resumed(TrainSettings, config_file, run.record.config.model_dump(mode="json"), RESUMABLE, run.path, **flags), run


# A distilled run's length and rate unless told, as fractions of its teacher's: easy consistency
# tuning of the 5000-step digit-0 teacher (rate 1e-3) met issue 16's one-step bar in 2000 steps at
# 2e-4; on 2-D data these defaults gave 1.13-1.47 x the W2 floor from EDM teachers, against
# 1.16-1.26 for 4000 steps at the teacher's rate (docs/benchmarks.md).
DISTILL_STEPS, DISTILL_LR = 0.4, 0.2


def distill_settings(teacher: Path, method: str, name: Optional[str] = None, runs_dir: Optional[Path] = None) -> tuple[dict, dict]:
    """(flags, base) of a run distilled from ``teacher`` with ``method``: named <teacher>-<method>
    and made beside it unless told, on the teacher's data, network and process and, below the
    TOML file, the environment and the caller's flags, its batch and seed, DISTILL_STEPS of its
    steps and DISTILL_LR of its rate."""
    saved = RunDir.open(teacher).record.config.model_dump(mode="json")
    flags = {"method": method, "teacher": teacher.absolute(), "name": name or f"{teacher.name}-{method}", "runs_dir": runs_dir or teacher.parent}
    base = {k: saved[k] for k in INHERITED + ("p_uncond", "batch_size", "seed")}
    return flags, {**base, "steps": max(1, round(DISTILL_STEPS * saved["steps"])), "lr": DISTILL_LR * saved["lr"]}


def check_names(s: TrainSettings, teacher: bool = True) -> None:
    """The plugin names and options of ``s``, its process and method, and (``teacher``) its
    teacher run: what can be refused before a dataset is built."""
    registry.validate_options("dataset", s.data, s.data_options)
    registry.validate_options("schedule", s.schedule, s.schedule_options)
    if s.process is not None:  # else the phase's default, checked once resolved
        registry.validate_options("process", s.process, s.process_options)
    check_process(s)
    if s.method is not None:
        registry.validate_options("method", s.method, s.method_options)
    if teacher and s.teacher is not None:
        check_teacher(s)
    if s.network is not None:
        registry.validate_options("network", s.network, s.network_options)
    if s.tracker is not None:  # its options, and its optional package installed
        trackers.check(s.tracker, s.tracker_options)


def check_resolved(s: TrainSettings, ds: Dataset) -> TrainSettings:
    """``s`` resolved for the dataset ``ds`` (pipeline.resolve), with the checks that need it."""
    s = resolve(s, ds)
    registry.validate_options("process", s.process, s.process_options)
    registry.validate_options("network", s.network, s.network_options)
    check_method(s)
    if s.cond == "class" and (ds.y is None or ds.num_classes == 0):
        raise DataError(f"dataset {s.data!r} has no class labels, so --cond class cannot be used; drop --cond.")
    # a batch, its noise and the network's input and output: four float32 copies at the least
    check_fits(4 * s.batch_size * math.prod(ds.shape) * 4, f"--batch-size {s.batch_size} of {tuple(ds.shape)} data", "use a smaller batch")
    return s


def latent_autoencoder(s: TrainSettings, run: Optional[RunDir], device: torch.device) -> Optional[Autoencoder]:
    """The autoencoder of a latent run: from the ``latent`` directory for a new run, from the run's
    own copy when it is resumed (so it encodes the data as it did); None for a pixel run."""
    if s.latent is None:
        return None
    for source in (run, RunDir.open(s.teacher) if s.teacher is not None else None):  # a resumed run's copy, or its teacher's
        if source is not None and source.record.latent is not None:
            return load_copy(source, source.record.latent.content_sha256, device)
    return Autoencoder.load(s.latent, device)


@dataclass
class Outcome:
    """How a session ended: ``reason`` is steps, interrupted, until-loss, until-metric or max-time."""

    run: Path
    reason: str
    step: int
    steps: int
    seconds: float  # this session's wall time, evaluations included
    explanation: str  # which stop criterion was met, where ("no criterion met" otherwise)


class Session:
    """One process's part of training a run; build it with ``Session.prepare``. ``ds`` is the
    data the run is judged on; ``train_ds`` what the network learns: ``ds`` itself, or its
    latents under ``autoencoder`` (latent.py)."""

    def __init__(self, s: TrainSettings, run: Optional[RunDir], ds: Dataset, world: distributed.World, device: torch.device, events: Events,
                 autoencoder: Optional[Autoencoder] = None, train_ds: Optional[Dataset] = None):
        self.s, self.run_dir, self.ds, self.world, self.device, self.events = s, run, ds, world, device, events
        self.autoencoder, self.train_ds = autoencoder, train_ds or ds
        self.watch = convergence.watch(s, ds)  # evaluations and stop criteria, checked before anything is trained
        self.rank_batch = distributed.rank_batch(s.batch_size, world)  # the global batch, split among processes
        self.device = distributed.init(world, device)  # joins the process group; cuda:LOCAL_RANK on CUDA
        fast_math(self.device)
        torch.manual_seed(s.seed)
        self.net = build_network(s, self.train_ds.shape, ds.num_classes)
        self.process = build_process(s)
        self.method = build_method(s)
        self.teacher = self._teacher(run)
        self.loop = loop_config(s, self.rank_batch, use_bf16(s.precision, self.device, images=ds.kind == "images"))
        channels_last = ds.kind == "images" and channels_last_pays(self.device, training=True)
        self.state: TrainState = make_state(self.net, self.loop, self.device, s.seed, channels_last=channels_last, compile=s.compile)
        self.record = RunRecord(s, DataInfo.of(ds), plugin_record(s), versions(), sum(p.numel() for p in self.net.parameters()),
                                autoencoder.info() if autoencoder is not None else None)
        self.first: Optional[tuple[dict, Optional[torch.Tensor]]] = None  # an evaluation made before training
        self.offset = 0.0  # wall time of earlier sessions of this run
        self.status, self.quality = "", ""  # what the progress shows: rate and loss, the latest evaluation

    def _teacher(self, run: Optional[RunDir]) -> Optional[Model]:
        """The teacher run's model, when the method calls it; a new run starts from its EMA weights."""
        fresh = run is None or not run.checkpoints()
        if self.s.teacher is None or not (fresh or (self.method is not None and self.method.uses_teacher)):
            return None
        teacher = load_model(self.s.teacher, str(self.device))
        if fresh:
            start_from(self.net, teacher.net)
        return teacher

    # -- preparing ------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, flags: dict, config_file: Optional[Path] = None, resume: Optional[Path] = None, events: Optional[Events] = None,
                base: Optional[dict] = None) -> "Session":
        """Check everything, build the dataset, network and optimiser, and make or reopen the run
        directory (restoring its last good checkpoint). Raises a DdpmctlError with one sentence
        when anything does not fit, before a step is trained. ``base``: settings below the TOML
        file (a distilled run's, from its teacher)."""
        s, run = settings(flags, config_file, resume, base)
        if s.data_dir is not None:  # the setting (TOML, env or flag) is where datasets look
            os.environ["DDPMCTL_DATA_DIR"] = str(s.data_dir)
        check_names(s, teacher=resume is None)  # before anything heavy is built
        world = distributed.world_from_env()  # torchrun: this process's rank; else one process
        if world.main:  # rank 0 alone writes: its outputs are checked, and a resumed run locked for it
            check_run_folder(s.runs_dir, run)
            if run is not None:
                run.lock()
        session = None
        try:
            set_threads(s.threads, world.local_size)
            device = pick_device(s.device)
            ds = build_dataset(s.data, s.data_options)
            autoencoder = latent_autoencoder(s, run, device)
            train_ds = latent_dataset(autoencoder, ds) if autoencoder is not None else ds
            s = check_resolved(s, train_ds)
            session = cls(s, run, ds, world, device, events or Events(), autoencoder, train_ds)
            session._open()
        except BaseException:  # nothing trains: the lock goes
            for r in (run, session.run_dir if session is not None else None):
                if r is not None:
                    r.unlock()
            raise
        return session

    def model(self) -> Model:
        """The EMA weights now, as a model to sample (the evaluations score it)."""
        return Model(self.run_dir, self.record, self.state.ema, self.process, self.state.step, self.device, _dataset=self.ds, method=self.method,
                     autoencoder=self.autoencoder)

    def _measure(self) -> tuple[dict, Optional[torch.Tensor]]:
        return self.watch.evaluator(self.model())

    def _open(self) -> None:
        """Make the run directory (after a first evaluation that a metric unable to read this data
        fails), or reopen it at its last good checkpoint; then replay its history into the stop criteria."""
        main, run = self.world.main, self.run_dir
        if self.watch.evaluator is not None and run is None and main:
            self.first = self._measure()
            convergence.check_threshold(self.watch.criteria.until_metric, self.first[0])
        if run is not None and main:
            run.remove_partial_writes()  # temporary files of a process killed mid-write
        if run is None:  # rank 0 names and makes the run directory (locked for it); the other ranks are told where it is
            made = RunDir.create(self.s.runs_dir / run_name(self.s), self.record) if main else None
            self.run_dir = made
            if made is not None and self.autoencoder is not None:  # the run decodes its samples without the autoencoder's directory
                self.autoencoder.save(made.path / COPY_NAME)
            path = distributed.broadcast_text(str(made.path) if made else None)
            self.run_dir = made or RunDir(Path(path))
        elif not run.checkpoints():  # killed before its first checkpoint: start again from step 0
            if main:
                run.check_restart()  # unless its checkpoints were removed: its history is kept
                run.truncate_metrics(0)
            self.events.note(f"resuming {run.path}: no checkpoint was written yet, starting from step 0")
        else:
            self._restore()
        self._replay()

    def _restore(self) -> None:
        run, s = self.run_dir, self.s
        tensors, meta, path, skipped = run.load_checkpoint()
        for msg in skipped:
            self.events.note(f"skipped a damaged checkpoint: {msg}", "warning")
        if changes := provenance_changes(meta):
            self.events.note(f"{path.name} was written with other software: " + "; ".join(changes) + ".", "warning")
        saved = meta.get("config", {})
        if saved.get("network_options") != s.network_options or saved.get("network") != s.network:
            raise ConfigError(f"checkpoint {path} was made by a different network config; it cannot be resumed with this one.")
        try:
            notes = self.state.restore(tensors, meta)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # tensors missing, extra or mis-shaped; bad metadata
            raise ConfigError(f"checkpoint {path} does not fit the network of this config ({str(exc).splitlines()[0][:200]}); "
                              "restore the file `ddpmctl train` wrote, or delete it to resume from an earlier one.") from None
        for msg in notes:
            self.events.note(msg, "warning")
        if self.state.step >= s.steps:  # refused before anything in the run is written
            raise RunError(f"run {run.path} already reached step {self.state.step} of {s.steps}; pass a larger --steps to train further.")
        if self.world.main:
            run.truncate_metrics(self.state.step)
            run.write_record(dataclasses.replace(run.record, config=s))
        self.events.note(f"resuming {run.path} from {path.name} (step {self.state.step})")

    def _replay(self) -> None:
        """Feed the run's history to the stop criteria; refuse a run that already met one."""
        distributed.barrier()  # the other ranks read the history after rank 0 has cut it back
        history = self.run_dir.metrics()
        self.offset = max((r.get("time", 0.0) for r in history), default=0.0)
        criteria = self.watch.criteria
        for r in history:
            criteria.on_record(r)
        criteria.on_time(self.state.step, self.offset)
        if criteria.reason:
            raise RunError(f"run {self.run_dir.path} already met its stop criterion ({criteria.explain()}); change it, or turn it off with 0 or none, to train further.")
        step = self.state.step
        if self.watch.evaluator is not None and self.world.main and self.first is None and not any(r.get("event") == "eval" and r["step"] == step for r in history):
            self.first = self._measure()
            convergence.check_threshold(criteria.until_metric, self.first[0])

    # -- training -------------------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False) -> Outcome:
        """Train to the end, a stop criterion, or until ``stop()`` is true; write RUN/stop.json.
        The run's tracker (rank 0) receives its records and grids; the run is unlocked at the end."""
        try:
            if self.world.main and self.s.tracker is not None:
                self.run_dir.tracker = trackers.open_tracker(self.s.tracker, self.s.tracker_options, self.run_dir.path, self.state.step)
            return self._run(stop)
        finally:
            self.run_dir.unlock()  # closes the tracker too

    def _run(self, stop: Callable[[], bool]) -> Outcome:
        s, state, ds, run = self.s, self.state, self.ds, self.run_dir
        x = self.train_ds.x.to(self.device)
        y = ds.y.to(self.device) if (s.cond == "class" and ds.y is not None) else None
        self.t0 = time.perf_counter()
        self.start_step = state.step
        self.stop_requested = False
        self.events.progress("train", state.step, s.steps)
        try:
            if self.first is not None:
                self._log_eval({**self.first[0], "time": round(self.offset, 3)}, self.first[1])
            hooks = Hooks(log=self._log, checkpoint=self._save, progress=self._progress, stop=lambda: self._should_stop(stop))
            why = train_loop(state, objective(s, self.train_ds, self.process, self.method, self.teacher), x, y, self.loop, hooks)
            ended = time.perf_counter()  # before the plots
            if self.world.main and self.method is not None:
                self._few_step_picture()
        except BaseException:
            self._end(failed=True)
            raise
        self._end(failed=False)
        elapsed = ended - self.t0
        criteria = self.watch.criteria
        reason = "steps" if why == "done" else ("interrupted" if self.stop_requested else criteria.reason)
        if self.world.main:
            summary = criteria.summary(reason, state.step, self.offset + elapsed)
            atomic_write_bytes(run.path / "stop.json", json.dumps(summary, indent=2).encode())
        return Outcome(run.path, reason, state.step, s.steps, elapsed, criteria.explain())

    def _end(self, failed: bool) -> None:
        """The run's plots (rank 0), handed to its tracker; then leave the process group. After a
        failure (a full disk, say) a plot that cannot be written does not hide the first error."""
        try:
            if self.world.main:
                for plot in convergence.write_plots(self.run_dir):  # loss.png, convergence.png, samples-over-training.png
                    self.run_dir.wrote_picture(plot, self.state.step, plot.stem)
        except WriteError:
            if not failed:
                raise
        finally:
            distributed.shutdown()

    def _few_step_picture(self) -> None:
        """RUN/few-step.png: 1, 2 and 4 steps from the same noise; on 2-D data the one-step map
        beside the teacher's ODE (grids.few_step_picture)."""
        teacher = self.teacher
        if teacher is None and self.s.teacher is not None and self.ds.kind == "points" and Path(self.s.teacher).is_dir():
            teacher = load_model(self.s.teacher, str(self.device))
        few_step_picture(self.model(), self.run_dir.path / "few-step.png", teacher, seed=self.s.seed)

    def _now(self) -> float:
        """The run's wall time: earlier sessions and this one."""
        return round(self.offset + time.perf_counter() - self.t0, 3)

    def _log(self, rec: dict) -> None:
        rec = {**rec, "time": self._now()}
        if self.world.main:
            self.run_dir.log(rec)
        self.watch.criteria.on_record(rec)
        self.events.record(rec)
        if rec.get("event") == "skipped":
            self.events.note(f"step {rec['step']}: skipped ({rec['reason']}; {rec['skipped_total']} so far)", "warning")
            return
        rate = (rec["step"] - self.start_step) / max(time.perf_counter() - self.t0, 1e-9)
        self.status = f"{rate:.0f} it/s  loss {rec['loss']:.4f}" + self.quality
        self.events.progress("train", rec["step"], self.s.steps, self.status)

    def _log_eval(self, rec: dict, samples: Optional[torch.Tensor]) -> None:
        """An evaluation: its record, its samples (for the strip), the stop criteria."""
        rec = {**rec, "time": rec.get("time", self._now())}
        self.run_dir.log(rec)
        if samples is not None:
            convergence.save_samples(self.run_dir.path, rec["step"], samples, self.watch.evaluator.labels, self.ds.kind)
        self.watch.criteria.on_record(rec)
        self.events.record(rec)
        if rec["values"]:
            key, value = next(iter(rec["values"].items()))
            self.quality = f"  {key} {value:.4g}"

    def _save(self, step: int, _) -> None:
        tensors, extra = self.state.tensors()  # every rank: the generator states are gathered
        if self.world.main:
            meta = {"config": self.s.model_dump(mode="json"), "plugins": self.record.to_json()["plugins"], "versions": self.record.versions}
            self.run_dir.save_checkpoint(step, tensors, {**meta, **extra}, keep=self.s.keep_checkpoints)

    def _progress(self, step: int) -> None:
        s = self.s
        if step % 10 == 0 or step == s.steps:  # reporting every step costs more than a 2-D step
            self.events.progress("train", step, s.steps, self.status)
        if self.world.main and s.sample_every and self.ds.kind == "images" and (step % s.sample_every == 0 or step == s.steps):
            # image runs: a fixed-seed sample grid of the EMA weights every sample_every steps
            model = self.model()  # the plain conditional model, x0_hat clipped as it samples; a few-step model in one step
            steps, sampler = (1, "few-step") if self.method is not None else (50, "ddpm")
            grid = preview(model.denoiser(), model.shape, self.run_dir.path / "grids" / f"step-{step:08d}.png", steps=steps, seed=s.seed, sampler=sampler,
                           decode=model.decode)
            self.run_dir.wrote_picture(grid, step, "grids")  # to the tracker
        if self.world.main and self.watch.every and (step % self.watch.every == 0 or step == s.steps):
            self._log_eval(*self._measure())

    def _should_stop(self, stop: Callable[[], bool]) -> bool:
        """``stop()`` (Ctrl-C, SIGTERM), or a stop criterion met."""
        self.watch.criteria.on_time(self.state.step, self._now())
        self.stop_requested = self.stop_requested or bool(stop())
        return self.stop_requested or self.watch.criteria.reason is not None
