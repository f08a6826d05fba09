"""The Python API: train, load, sample and evaluate from a script or a notebook.

    import ddpmctl

    run = ddpmctl.train(data="spiral", steps=2000, name="spiral")       # -> Run (runs/spiral)
    run = ddpmctl.Run.load("runs/spiral")
    s = run.sample(n=2000, sampler="dpm-solver++", steps=20, seed=0)    # -> Samples (x, labels, record)
    ev = run.evaluate(["wasserstein"], n=2000, sampler="ddim", steps=50) # -> Evaluation
    ev.results["wasserstein"].values, ev.results["wasserstein"].floor
    ds = ddpmctl.load_dataset("spiral", n=5000)                          # -> Dataset (x, y, fresh draws)
    ae = ddpmctl.train_autoencoder(data="emoji32", name="ae")          # -> Autoencoder (runs/ae)
    run = ddpmctl.train(data="emoji32", latent="runs/ae")               # latent diffusion; samples are decoded
    ddpmctl.evaluate_autoencoder("runs/ae", ["fid"], n=1000)             # reconstruction FID: a latent model's floor

Every `ddpmctl` command is a thin face over these functions. Long work reports through an
``events.Events`` object (nothing is printed unless you pass one, such as ``events.Printer()``).
Settings are those of `ddpmctl train` (docs/config.md), given as keyword arguments; plugin
options as ``data_options``, ``network_options``, ... dictionaries, or ``digits="0"`` for the
digit subset of MNIST-like data.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ddpmctl import registry
from ddpmctl import sweeps
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.autoencoding import AutoencoderSession
from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import OptionsError
from ddpmctl.events import Events
from ddpmctl.metrics.base import MetricResult, score
from ddpmctl.latent import Autoencoder
from ddpmctl.devices import pick_device
from ddpmctl.pipeline import Model, build_dataset, check_draw, load_model, sample as draw
from ddpmctl.record import DataInfo
from ddpmctl.samples import Samples
from ddpmctl.session import Session, distill_settings

PathLike = Union[str, Path]
Classes = Union[None, int, str, Sequence[Union[int, str]]]


def train(*, config: Optional[PathLike] = None, resume: Optional[PathLike] = None, events: Optional[Events] = None,
          stop: Optional[Callable[[], bool]] = None, digits: Optional[str] = None, **settings) -> Run:
    """Train a model as `ddpmctl train` does and return the finished run.

    ``settings`` are TrainSettings fields (``data``, ``steps``, ``network_options``, ...; see
    docs/config.md), laid over the defaults, the TOML ``config`` file and DDPMCTL_* variables.
    ``resume`` continues a run directory (only settings in config.RESUMABLE may change).
    ``stop()`` is polled every step: return True to end early with a checkpoint."""
    if digits is not None:
        settings["data_options"] = {**settings.get("data_options", {}), "digits": digits}
    session = Session.prepare(settings, Path(config) if config else None, Path(resume) if resume else None, events)
    outcome = session.run(stop=stop or (lambda: False))
    return Run.load(outcome.run, device=str(session.device))


def distill(teacher: PathLike, method: str, *, name: Optional[str] = None, config: Optional[PathLike] = None,
            resume: Optional[PathLike] = None, events: Optional[Events] = None, stop: Optional[Callable[[], bool]] = None, **settings) -> Run:
    """A few-step model from a trained run, as `ddpmctl distill` makes it: a new run (``name``,
    default <teacher>-<method>, beside the teacher) with the teacher's data, network and process,
    starting from its EMA weights and trained with ``method`` (methods.py; ``method_options``).
    Unset, batch size and seed are the teacher's, steps 0.4 x its steps and the learning rate
    0.2 x its rate (session.DISTILL_STEPS, DISTILL_LR)."""
    if resume is not None:
        return train(resume=resume, config=config, events=events, stop=stop, **settings)
    flags, base = distill_settings(Path(teacher), method, name)
    session = Session.prepare({**flags, **settings}, Path(config) if config else None, None, events, base=base)
    outcome = session.run(stop=stop or (lambda: False))
    return Run.load(outcome.run, device=str(session.device))


def sweep(name: str, grid: dict[str, Sequence], *, runs_dir: Optional[PathLike] = None, parallel: int = 1, config: Optional[PathLike] = None,
          events: Optional[Events] = None, stop: Optional[Callable[[], bool]] = None, **settings) -> list[Path]:
    """Train one run per combination of the ``grid`` values, as `ddpmctl sweep` does, and return
    the run directories (RUNS_DIR/NAME/CELL, in grid order).

    ``grid`` maps a setting (``"lr"``, ``"network"``) or a plugin option (``"network.width"``)
    to its values; ``settings`` are shared by every cell, as in ``train``; every cell is evaluated
    the same way (every 500 steps unless ``eval_every`` is given). Each cell trains in its own
    `ddpmctl train` process, ``parallel`` at once. Calling it again resumes the sweep: finished
    cells are not trained again. A cell that fails raises RunError naming its log; ``stop()``
    interrupts the running cells (they save a checkpoint)."""
    plan = sweeps.plan(name, grid, Path(runs_dir) if runs_dir is not None else None, Path(config) if config else None, **settings)
    sweeps.write(plan)
    outcome = sweeps.run(plan, parallel, events, stop)
    outcome.check()
    return outcome.runs


def train_autoencoder(*, config: Optional[PathLike] = None, resume: Optional[PathLike] = None, events: Optional[Events] = None,
                      stop: Optional[Callable[[], bool]] = None, **settings) -> Autoencoder:
    """Train an autoencoder for latent diffusion as `ddpmctl autoencoder train` does (settings:
    config.AutoencoderSettings) and return its EMA weights, ready to encode and decode."""
    session = AutoencoderSession.prepare(settings, Path(config) if config else None, Path(resume) if resume else None, events)
    outcome = session.run(stop=stop or (lambda: False))
    return Autoencoder.load(outcome.run, session.device)


def load_autoencoder(path: PathLike, device: str = "auto") -> Autoencoder:
    """An autoencoder run's newest EMA weights and scale factor (latent.Autoencoder)."""
    return Autoencoder.load(Path(path), pick_device(device))


def evaluate_autoencoder(path: PathLike, metrics: Union[str, Sequence[str]] = "fid", n: int = 1000, seed: int = 0, device: str = "auto",
                         options: Optional[dict[str, dict]] = None, events: Optional[Events] = None) -> dict[str, MetricResult]:
    """Score the reconstructions of ``n`` held-out images with metric plugins, as samples are
    scored: the reconstruction FID is the floor a latent model of this autoencoder can reach."""
    events = events or Events()
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    resolved = [(m, *registry.resolve("metric", m, (options or {}).get(m))) for m in names]  # every name checked first
    ae = load_autoencoder(path, device)
    s = ae.record.settings
    ds = load_dataset(s.data, **s.data_options)
    held = ds.fresh(n, seed)[0]
    x_rec = ae.decode(ae.encode(held))
    return {name: score(fn, x_rec, ds, o.model_dump(), progress=events.metric_progress(name)) for name, fn, o in resolved}


def load_dataset(name: str, **options) -> Dataset:
    """A dataset plugin by name with its options, e.g. ``load_dataset("mnist16", digits="0")``."""
    registry.validate_options("dataset", name, options)
    return build_dataset(name, options)


@dataclass
class Evaluation:
    """The metrics of one set of samples: ``results[name]`` is a MetricResult (values, floor, protocol)."""

    results: dict[str, MetricResult]
    samples: Samples
    run: Path
    step: int

    def save(self, folder: Optional[PathLike] = None) -> list[Path]:
        """One JSON per metric in ``folder`` (default RUN/eval), as `ddpmctl eval` writes them."""
        folder = Path(folder) if folder else self.run / "eval"  # made by the first write
        rec, out = self.samples.record, []
        for name, result in self.results.items():
            path = folder / f"{name}-{rec['sampler']}-{rec['steps']}steps-n{len(self.samples)}.json"
            atomic_write_bytes(path, json.dumps({**result.to_dict(), "sampling": rec, "run": str(self.run)}, indent=2).encode())
            out.append(path)
        return out


class Run:
    """A trained run: its typed record and its model (the EMA weights of its last good checkpoint)."""

    def __init__(self, model: Model):
        self.model = model

    @classmethod
    def load(cls, path: PathLike, device: str = "auto", checkpoint: Optional[PathLike] = None, compile: bool = False) -> Run:
        """Open a run directory (any written by ddpmctl, older versions included)."""
        return cls(load_model(Path(path), device, Path(checkpoint) if checkpoint else None, compile=compile))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, step={self.step}, data={self.config.data!r}, network={self.config.network!r})"

    path = property(lambda self: self.model.run.path, doc="the run directory")
    record = property(lambda self: self.model.record, doc="the typed config.json: RunRecord")
    config = property(lambda self: self.model.record.config, doc="the resolved TrainSettings")
    data: DataInfo = property(lambda self: self.model.record.data, doc="shape, classes and kind of the training data")
    step = property(lambda self: self.model.step, doc="the training step of the loaded weights")
    num_classes = property(lambda self: self.model.num_classes, doc="classes of a conditional model, else 0")

    def metrics(self) -> list[dict]:
        """The records of metrics.jsonl: losses, evaluations during training, skipped steps."""
        return self.model.run.metrics()

    def dataset(self) -> Dataset:
        """The training data (built from the run's data settings on first use)."""
        return self.model.dataset()

    # -- sampling -------------------------------------------------------------------------------
    def labels(self, n: int, classes: Classes = None, guidance: float = 1.0, per_class: Optional[int] = None) -> Optional[torch.Tensor]:
        """The label of each of ``n`` samples: the requested classes in equal contiguous blocks,
        or ``per_class`` of each; without classes, None (unconditional) or, with guidance, all classes."""
        k = self.num_classes
        if per_class is not None:
            if k == 0:
                raise OptionsError(f"--per-class needs a class-conditional model, but {self.path} was trained without --cond class; use --n, or train with --cond class.")
            return torch.tensor(self._chosen(classes)).repeat_interleave(per_class)
        if k == 0:
            if classes not in (None, [], ()):
                raise OptionsError(f"--class needs a class-conditional model, but {self.path} was trained without --cond class; drop --class or train with --cond class.")
            if guidance != 1.0:
                raise OptionsError(f"--guidance needs a class-conditional model, but {self.path} was trained without --cond class; drop --guidance or train with --cond class.")
            return None
        if classes in (None, [], ()) and guidance == 1.0:
            return None
        chosen = self._chosen(classes)
        return torch.tensor(chosen)[torch.arange(n) * len(chosen) // n]  # sample i gets class chosen[i * K // n]

    def _chosen(self, classes: Classes) -> list[int]:
        """Classes as ints, lists or comma lists ("1,2"), checked; all of the model's without any."""
        k = self.num_classes
        items = [str(c) for c in range(k)] if classes in (None, [], ()) else [classes] if isinstance(classes, (int, str)) else list(classes)
        chosen: list[int] = []
        for item in items:
            for part in str(item).replace(" ", "").split(","):
                if not part:
                    continue
                if not part.lstrip("-").isdigit() or not 0 <= int(part) < k:
                    raise OptionsError(f"--class {part} is not a class of this model; use classes 0 to {k - 1}.")
                chosen.append(int(part))
        if not chosen:
            raise OptionsError(f"--class was given no class; use classes 0 to {k - 1}, e.g. --class 7 or --class 1,2.")
        return chosen

    def sample(self, n: Optional[int] = None, sampler: Optional[str] = None, steps: Optional[int] = None, seed: int = 0,
               classes: Classes = None, guidance: float = 1.0, per_class: Optional[int] = None, labels: Optional[torch.Tensor] = None,
               clip: Optional[float] = None, dynamic_threshold: Optional[float] = None, options: Optional[dict] = None,
               batch_size: Optional[int] = None, trajectory: bool = False, events: Optional[Events] = None) -> Samples:
        """Draw samples (sample i depends only on (seed, i)); default n: 2000 points or 64 images;
        default sampler: ddpm, or few-step for a few-step model (methods.py).
        ``trajectory`` keeps x_t of the first batch at about 40 steps in ``Samples.trajectory``."""
        events = events or Events()
        sampler = sampler or self.model.default_sampler
        self.check_steps(steps)
        check_draw(seed, guidance, n, self.model.data.shape)  # before labels are made: their checks would misname a NaN guidance
        images = self.data.kind == "images"
        default_n = n or (64 if images else 2000)
        if labels is None:
            labels = self.labels(default_n, classes, guidance, per_class)
        if per_class is not None and n is not None:
            raise OptionsError("--n and --per-class both set the number of samples; pass only one of them.")
        n = len(labels) if per_class is not None else default_n
        registry.validate_options("sampler", sampler, options)
        frames: list[tuple[str, torch.Tensor]] = []

        def keep(i, S, sigma, x_t, x0_hat):  # x_t at about 40 steps of the first batch
            every = max(1, S // 40)
            if i == 1 or i % every == 0 or i == S:
                frames.append((f"step {i}, sigma = {sigma:.3g}" if i < S else "x_0", (x_t[:8] if images else x_t).float().cpu()))

        done = [0]

        def advance(b):
            done[0] += b
            events.progress(f"sampling {n} with {sampler}", done[0], n)

        events.progress(f"sampling {n} with {sampler}", 0, n)
        x, rec = draw(self.model, n, sampler, steps, seed, options, batch_size or (256 if images else 2048), labels=labels,
                      guidance=guidance, clip_x0=clip, dynamic_threshold=dynamic_threshold, callback=keep if trajectory else None, on_batch=advance)
        return Samples(x, labels, rec, frames)

    def check_steps(self, steps: Optional[int]) -> None:
        """A step count of sampling: at most the model's T training steps (a discrete model), or
        the process's largest grid (a continuous one)."""
        T = self.model.process.max_steps
        if steps is not None and steps > T:
            if self.model.process.levels is not None:
                raise OptionsError(f"--steps {steps} is more than the model's T = {T} training steps; use at most {T}.")
            raise OptionsError(f"--steps {steps} is more than the {T} noise levels a sampler may visit; use at most {T}.")

    # -- evaluating -----------------------------------------------------------------------------
    def evaluate(self, metrics: Union[str, Sequence[str]] = "wasserstein", n: int = 2000, sampler: Optional[str] = None,
                 steps: Optional[int] = None, seed: int = 0, samples: Union[None, PathLike, Samples] = None,
                 classes: Classes = None, guidance: float = 1.0, options: Optional[dict[str, dict]] = None,
                 events: Optional[Events] = None) -> Evaluation:
        """Score samples (drawn here, or ``samples``: a Samples, an .npz or an export folder)
        against real data with metric plugins; each result carries its floor and protocol.
        ``options`` maps a metric name to its options."""
        events = events or Events()
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        self.check_steps(steps)
        resolved = [(m, *registry.resolve("metric", m, (options or {}).get(m))) for m in names]  # every name checked first
        if samples is None:
            labels = self.labels(n, classes, guidance)
            if labels is None and self.num_classes and any(takes(fn, "labels") for _, fn, _ in resolved):
                labels = self.labels(n, list(range(self.num_classes)), guidance)  # every class
            samples = self.sample(n, sampler, steps, seed, labels=labels, guidance=guidance, events=events)
        elif not isinstance(samples, Samples):
            samples = Samples.load(Path(samples))
        rec, results = samples.record, {}
        for name, fn, o in resolved:
            png = self.path / "eval" / f"{name}-{rec['sampler']}-{rec['steps']}steps-n{len(samples)}.png"
            if takes(fn, "png"):
                png.parent.mkdir(parents=True, exist_ok=True)
            results[name] = score(fn, samples.x, self.dataset(), o.model_dump(), labels=samples.labels,
                                  progress=events.metric_progress(name), png=str(png))
        return Evaluation(results, samples, self.path, self.step)


def takes(fn: Callable, parameter: str) -> bool:
    """Whether a metric plugin takes ``parameter``: ``labels`` (it scores samples by class), ``png``."""
    return parameter in inspect.signature(fn).parameters

