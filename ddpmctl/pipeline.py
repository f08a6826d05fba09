"""From names to built objects: the glue between config, registries and the pure core.

Nothing here prints or exits; the CLI does that.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ddpmctl import __version__, registry
from ddpmctl.checkpoint import split
from ddpmctl.config import MAX_SEED, PHASE_DEFAULTS, TrainSettings
from ddpmctl.datasets.base import Dataset
from ddpmctl.denoiser import Denoiser
from ddpmctl.devices import channels_last_pays, check_fits, pick_device
from ddpmctl.errors import CheckpointError, ConfigError, DataError, DdpmctlError, OptionsError, RunError, UnknownNameError
from ddpmctl.latent import COPY_NAME, Autoencoder
from ddpmctl.methods import Method
from ddpmctl.processes import Process
from ddpmctl.record import DataInfo, PluginInfo, RunRecord
from ddpmctl.run import RunDir
from ddpmctl.samplers.base import randn
from ddpmctl.schedules import Schedule


def build_dataset(name: str, options: dict) -> Dataset:
    ds = registry.build("dataset", name, options)
    if len(ds) == 0:
        raise DataError(f"dataset {name!r} is empty with options {options}; loosen the filter (for example --digits).")
    return ds


def resolve(s: TrainSettings, ds: Dataset) -> TrainSettings:
    """Fill the phase defaults (values left at None) for this dataset's kind (the process: a
    few-step method's own, if it names one), and the options the process takes from the
    data (EDM's sigma_data) when they are not given."""
    defaults = PHASE_DEFAULTS[ds.kind]
    filled = {k: v for k, v in defaults.items() if getattr(s, k) is None}
    if s.process is None and wants_ddpm(s):
        filled["process"] = "ddpm"
    elif s.process is None and s.method is not None and (own := registry.load("method", s.method).default_process):
        filled["process"] = own  # a method trained from scratch brings its process (consistency: edm; meanflow: flow)
    process = registry.load("process", filled.get("process", s.process))
    from_data = {k: v for k, v in getattr(process, "data_defaults", lambda x: {})(ds.x).items() if k not in s.process_options}
    if from_data:
        filled["process_options"] = {**s.process_options, **from_data}
    if s.method is not None:  # a few-step model is watched at one step unless told otherwise
        filled.update({k: v for k, v in (("eval_sampler", "few-step"), ("eval_steps", 1)) if k not in s.model_fields_set})
    return s.model_copy(update=filled)


def default_metric(kind: str, shape) -> str:
    """The metric a run is judged by unless one is named: wasserstein for 2-D points; for
    1-channel images (digits) the classifier FID when installed, else FID, as for other images."""
    if kind == "points":
        return "wasserstein"
    known = registry.names("metric")
    for name in (("classifier-fid", "fid") if shape[0] == 1 else ("fid",)):
        if name in known:
            return name
    raise UnknownNameError(f"no image metric is installed (looked for classifier-fid and fid; known: {', '.join(known)}); pass --metric NAME.")


def plugin_record(s: TrainSettings) -> dict[str, PluginInfo]:
    out = {}
    kinds = [("dataset", s.data), ("network", s.network), ("schedule", s.schedule), ("process", s.process)]
    for kind, name in kinds + ([("method", s.method)] if s.method else []):
        e = registry.entry(kind, name)
        out[kind] = PluginInfo(name, e.dist, e.version)
    return out


def build_network(s: TrainSettings, data_shape, num_classes: int) -> torch.nn.Module:
    """The network of resolved settings ``s`` for data of ``data_shape`` with ``num_classes`` classes."""
    extra = {"out_mult": 2} if s.learn_sigma else {}  # learned variance: twice the channels
    if s.method is not None and registry.load("method", s.method).noise_inputs == 2:
        extra["noise_inputs"] = 2  # it also reads where a jump ends (methods.py)
    return registry.build(
        "network",
        s.network,
        s.network_options,
        data_shape=tuple(data_shape),
        num_classes=num_classes if s.cond == "class" else 0,
        **extra,
    )


def build_schedule(s: TrainSettings) -> Schedule:
    return registry.build("schedule", s.schedule, s.schedule_options)


# Settings of the ddpm process alone, with their defaults (set to anything else, they are "given").
DDPM_ONLY = {key: TrainSettings.model_fields[key].default for key in ("learn_sigma", "loss_weighting", "prediction")}


def wants_ddpm(s: TrainSettings) -> bool:
    """Whether a setting only the ddpm process reads is given (then the default process is ddpm)."""
    return s.schedule != TrainSettings.model_fields["schedule"].default or any(getattr(s, key) != default for key, default in DDPM_ONLY.items())


def check_process(s: TrainSettings) -> None:
    """Refuse settings that only the ddpm process reads, set for another process (an unset
    process becomes ddpm when they are given: ``resolve``)."""
    if s.process in (None, "ddpm"):
        return
    for key, default in DDPM_ONLY.items():
        if getattr(s, key) != default:
            raise ConfigError(f"{key} applies to the ddpm process only, not to {s.process}; drop it or train with --process ddpm.")


def build_process(s: TrainSettings) -> Process:
    """The diffusion process of resolved settings ``s``: its plugin, given the schedule and prediction target."""
    return registry.build("process", s.process, s.process_options, schedule=build_schedule(s), prediction=s.prediction)


def build_method(s: TrainSettings) -> Optional[Method]:
    """The few-step method of resolved settings ``s``, or None for a diffusion model."""
    return None if s.method is None else registry.build("method", s.method, s.method_options)


def check_method(s: TrainSettings) -> None:
    """Refuse a few-step method on a process it is not defined on, with a learned variance, or
    without the teacher it calls."""
    if s.method is None:
        return
    method = build_method(s)
    if method.uses_teacher and s.teacher is None:
        raise ConfigError(f"method {s.method} with these options learns from a teacher's network; make it with `ddpmctl distill RUN --method {s.method}`.")
    if method.processes is not None and s.process not in method.processes:
        raise ConfigError(f"method {s.method} is defined on the {', '.join(method.processes)} process, not on {s.process}; train (or distill a run trained) with --process {method.processes[0]}.")
    if s.learn_sigma:
        raise ConfigError(f"method {s.method} does not use a learned variance; distill a run trained without --learn-sigma.")


# What a run distilled from a teacher keeps of it: the same data, network and process.
INHERITED = ("data", "data_options", "network", "network_options", "process", "process_options", "schedule", "schedule_options", "prediction", "cond", "learn_sigma",
             "latent")


def check_teacher(s: TrainSettings) -> None:
    """A teacher run must exist and share the data, network and process settings of ``s``."""
    teacher = RunDir.open(s.teacher).record.config
    if teacher.method is not None:
        raise ConfigError(f"{s.teacher} is itself a few-step model (method {teacher.method}); distill a diffusion run.")
    ours = s.model_dump(mode="json")
    theirs = teacher.model_dump(mode="json")
    diff = [k for k in INHERITED if ours[k] is not None and ours[k] != theirs[k]]
    if diff:
        what = "; ".join(f"{k} is {theirs[k]!r} there, {ours[k]!r} here" for k in diff)
        raise ConfigError(f"the teacher {s.teacher} was trained with other settings ({what}); drop them, the distilled run takes the teacher's.")


def start_from(net: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Load a teacher's weights into ``net``; a network that also reads a second noise level keeps
    that embedding as built (it starts at zero: the teacher's function)."""
    missing, unexpected = net.load_state_dict(teacher.state_dict(), strict=False)
    extra = [k for k in missing if ".mlp2." not in k]
    if extra or unexpected:
        raise ConfigError(f"the teacher's network does not fit this one (missing {extra[:3]}, unexpected {unexpected[:3]}); distill with the teacher's network settings.")


def run_name(s: TrainSettings) -> str:
    return s.name or f"{s.data}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Model:
    """A trained model (its EMA weights) and its run record, ready to sample. ``run`` is None
    for a model that lives only in memory (the evaluations during training, benchmarks)."""

    run: Optional[RunDir]
    record: RunRecord
    net: torch.nn.Module
    process: Process
    step: int
    device: torch.device
    _dataset: Optional[Dataset] = field(default=None, repr=False)
    changes: list[str] = field(default_factory=list)  # provenance: what differs from when the checkpoint was written
    method: Optional[Method] = None  # a few-step model's method (methods.py)
    autoencoder: Optional[Autoencoder] = None  # a latent model's: samples are decoded to images

    @property
    def shape(self) -> tuple[int, ...]:
        """What the network denoises: the latents of a latent model, else the data."""
        return self.record.model_shape

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images from what the sampler returns: the autoencoder's decoding of latents, else ``x``."""
        return x if self.autoencoder is None else self.autoencoder.decode(x)

    @property
    def default_sampler(self) -> str:
        """What `ddpmctl sample` uses unless told: few-step for a few-step model, else ddpm."""
        return "few-step" if self.method is not None else "ddpm"

    @property
    def config(self) -> TrainSettings:
        return self.record.config

    @property
    def data(self) -> DataInfo:
        return self.record.data

    @property
    def num_classes(self) -> int:
        return self.record.num_classes

    def default_clip(self) -> float | None:
        """Where x0_hat is clamped unless asked otherwise: [-1, 1] for images (as DDPM's
        clip_denoised), 1.25 x the largest |coordinate| of the training data for 2-D points,
        none for latents (they have no fixed range). Near t = T an eps-prediction error is multiplied by 1 / sqrt(alpha_bar_t) (about 160
        for the linear schedule), so an unclamped x0_hat can land far outside the data."""
        if self.autoencoder is not None:
            return None
        if self.data.kind == "images":
            return 1.0
        absmax = self.data.absmax
        return round(1.25 * absmax, 3) if absmax else None

    def resolve_clip(self, clip_x0: float | None) -> float | None:
        """None: the default clip; 0: no clipping; c > 0: clamp to [-c, c]."""
        if clip_x0 is None:
            return self.default_clip()
        return clip_x0 or None

    def denoiser(self, guidance: float = 1.0, clip_x0: float | None = None, dynamic_threshold: float | None = None) -> Denoiser:
        """A denoiser of this model; ``clip_x0`` as in ``resolve_clip``."""
        m = self.method
        second = (lambda sigma, sigma_next: m.second_noise(self.process, sigma, sigma_next)) if m is not None and m.noise_inputs == 2 else None
        return Denoiser(self.net, self.process, self.config.prediction, self.num_classes, guidance, self.resolve_clip(clip_x0),
                        dynamic_threshold, second, m.sampling if m is not None else None)

    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = build_dataset(self.config.data, self.config.data_options)
        return self._dataset


def load_model(path: Path, device: str = "auto", checkpoint: Path | None = None, compile: bool = False) -> Model:
    """A run's EMA weights on ``device``, ready to sample: image networks channels-last where
    that is faster (devices.channels_last_pays), optionally through torch.compile (a slow first
    batch, then faster)."""
    run = RunDir.open(path)
    record = run.record
    dev = pick_device(device)
    autoencoder = load_copy(run, record.latent.content_sha256, dev) if record.latent is not None else None
    net = build_network(record.config, record.model_shape, record.data.num_classes)
    tensors, meta, used, _ = run.load_checkpoint(checkpoint)
    try:
        net.load_state_dict(split(tensors, "ema"))
        step = int(meta["step"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # tensors missing, extra or mis-shaped; a bad step
        why = str(exc).replace("\n", " ").replace("\t", "")[:200]
        raise CheckpointError(f"checkpoint {used} does not fit this run's network ({why}); restore the file `ddpmctl train` wrote, or delete it to load an earlier one.") from None
    net = net.to(dev).eval().requires_grad_(False)
    if record.data.kind == "images" and channels_last_pays(dev, training=False):
        net = net.to(memory_format=torch.channels_last)
    if compile:
        net = torch.compile(net)
    return Model(run, record, net, build_process(record.config), step, dev, changes=provenance_changes(meta), method=build_method(record.config),
                 autoencoder=autoencoder)


def load_copy(run: RunDir, content_sha256: str, device: torch.device) -> Autoencoder:
    """A latent run's copy of its autoencoder, checked against the weights its record names."""
    ae = Autoencoder.from_file(run.path / COPY_NAME, device)
    if ae.content_sha256 != content_sha256:
        raise RunError(f"{run.path / COPY_NAME} holds other weights than the autoencoder this run was trained on; restore the file or train the run again.")
    return ae


def provenance_changes(meta: dict) -> list[str]:
    """What differs between the plugins and packages that wrote a checkpoint and those installed now."""
    out = []
    for kind, was in (meta.get("plugins") or {}).items():
        then = f"{was.get('dist')} {was.get('version')}"
        try:
            e = registry.entry(kind, was["name"])
        except DdpmctlError:
            out.append(f"{kind} {was['name']!r} came from {then}, which is not installed now")
            continue
        if (e.dist, e.version) != (was.get("dist"), was.get("version")):
            out.append(f"{kind} {was['name']!r} came from {then}, now from {e.dist} {e.version}")
    now = versions()
    for dist, version in (meta.get("versions") or {}).items():
        if now.get(dist) != version:
            out.append(f"{dist} was {version}, now {now.get(dist, 'not installed')}")
    return out


NOISE_BLOCK = 16  # sample i draws its noise from the generator of block i // 16: batch size does not matter


def block_generators(seed: int, start: int, n: int, device) -> list[torch.Generator]:
    first, last = start // NOISE_BLOCK, (start + n - 1) // NOISE_BLOCK
    return [torch.Generator(device=device).manual_seed((seed * 1_000_003 + b) % 2**64) for b in range(first, last + 1)]  # every 63-bit seed


def check_draw(seed: int, guidance: float = 1.0, n: int | None = None, shape: tuple[int, ...] = ()) -> None:
    """What every sampling path refuses before it starts: a seed outside 63 bits, a guidance scale
    that is not a number, and more samples (of ``shape``) than this machine's memory holds."""
    if not 0 <= seed <= MAX_SEED:
        raise OptionsError(f"--seed {seed} is outside 0..{MAX_SEED}; choose a seed in that range.")
    if not math.isfinite(guidance):
        raise OptionsError(f"--guidance {guidance} is not a finite number; use a scale such as 1 (no guidance) to 7.")
    if n is not None and n < 1:
        raise OptionsError(f"--n {n} asks for no samples; ask for at least 1.")
    if n is not None:  # float32 samples, all kept in memory
        check_fits(n * math.prod(shape) * 4, f"--n {n} samples of shape {tuple(shape)}", "ask for fewer (another --seed draws another set)")


def sample(
    model: Model,
    n: int,
    sampler: Optional[str] = None,
    steps: int | None = None,
    seed: int = 0,
    options: dict | None = None,
    batch_size: int = 2048,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    clip_x0: float | None = None,
    callback: Callable | None = None,
    on_batch: Callable[[int], None] | None = None,
    dynamic_threshold: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """Draw n samples; sample i depends only on (seed, i), not on the batch size. Unset, the
    sampler is the model's default (``Model.default_sampler``).

    ``callback(i, S, t, x_t, x0_hat)`` sees the first batch's trajectory. Returns the samples
    (float32, CPU) and a record of how they were drawn.
    """
    check_draw(seed, guidance, n, model.data.shape)
    sampler = sampler or model.default_sampler
    fn, opts = registry.resolve("sampler", sampler, options)
    steps = steps or getattr(fn, "default_steps", None)  # the sampler's own (few-step: 1), else the process's
    batch_size = max(NOISE_BLOCK, batch_size // NOISE_BLOCK * NOISE_BLOCK)
    out, nfe = [], 0
    clipped, seen = 0, 0
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        gens = block_generators(seed, start, b, model.device)
        # Each block generator yields whole blocks; a last partial block uses its first rows.
        pad = len(gens) * NOISE_BLOCK - b
        x_T = randn((b + pad, *model.shape), gens, model.device)
        y = None
        if labels is not None:
            y = labels[start : start + b].to(model.device)
            y = torch.cat([y, y[:1].expand(pad)]) if pad else y
        den = model.denoiser(guidance, clip_x0, dynamic_threshold)
        with torch.inference_mode():
            x0, used = fn(den, x_T, steps, gens, decoded(model, callback) if start == 0 else None, y, **opts.model_dump())
            out.append(model.decode(x0[:b]).float().cpu())
        nfe = used
        clipped += den.clip_count
        seen += den.x0_count
        if on_batch:
            on_batch(b)
    record = {
        "n": n, "sampler": sampler, "options": opts.model_dump(), "steps": steps or model.process.default_steps,
        "nfe": nfe, "seed": seed, "guidance": guidance, "clip_x0": model.resolve_clip(clip_x0),
        "dynamic_threshold": dynamic_threshold, "clipped_values": clipped, "clipped_fraction": clipped / seen if seen else 0.0,
        "checkpoint_step": model.step,
    }
    return torch.cat(out), record


def decoded(model: Model, callback: Callable | None) -> Callable | None:
    """A latent model's trajectory callback sees images: x_t and x0_hat of the first 8 samples, decoded."""
    if callback is None or model.autoencoder is None:
        return callback
    return lambda i, S, sigma, x_t, x0_hat: callback(i, S, sigma, model.decode(x_t[:8]), model.decode(x0_hat[:8]))


def versions() -> dict[str, str]:
    out = {"ddpmctl": __version__, "torch": torch.__version__}
    for dist in ("pot", "pytorch-fid", "torchvision"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
