"""Settings: defaults < TOML file (--config) < environment (DDPMCTL_...) < command-line flags.

Unknown keys are errors wherever they come from. A value left at ``None`` takes the default
of the data's phase (2-D points or images), resolved once the dataset is known; the
resolved config is what a run saves.
"""

from __future__ import annotations

import contextvars
import os
import re
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings.exceptions import SettingsError

from ddpmctl.errors import ConfigError, format_validation_error
from ddpmctl.stopping import Threshold, parse_duration

ENV_PREFIX = "DDPMCTL_"
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; derived seeds stay below 2^63 (training.stream_seed)
_toml_file: contextvars.ContextVar[Optional[Path]] = contextvars.ContextVar("toml_file", default=None)
_layers: contextvars.ContextVar[bool] = contextvars.ContextVar("layers", default=True)  # False: the given values alone


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True, allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        if not _layers.get():  # a saved config is read as it was written, whatever the environment says
            return (init_settings,)
        sources = [init_settings, env_settings]
        path = _toml_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # Settings both commands have: a run name inside --runs-dir, a duration.
    @field_validator("name", check_fields=False)
    @classmethod
    def _name(cls, v):
        return check_run_name(v)

    @field_validator("max_time", mode="before", check_fields=False)
    @classmethod
    def _duration(cls, v):
        return None if v is None else parse_duration(v)


def check_run_name(name: Optional[str]) -> Optional[str]:
    """A run name is one plain folder name inside --runs-dir: not empty, no separator, not . or ..
    (a name like ../x or /abs would put the run outside the runs directory)."""
    if name is None:
        return None
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or len(name.encode()) > 255:
        raise ValueError(f"run name {name!r} must be one plain folder name (no '/', not '.' or '..', at most 255 bytes); "
                         "the run is made inside --runs-dir, so choose where with --runs-dir")
    return name


class TrainSettings(_Base):
    """Everything `ddpmctl train` needs. ``None`` means: the default for the data's phase."""

    data: str = Field("spiral", description="dataset plugin name")
    data_options: dict[str, Any] = Field(default_factory=dict, description="options of the dataset plugin")
    network: Optional[str] = Field(None, description="network plugin name (default: mlp for 2-D, unet for images)")
    network_options: dict[str, Any] = Field(default_factory=dict, description="options of the network plugin")
    process: Optional[str] = Field(None, description="diffusion process plugin, the training objective: ddpm (discrete, Ho et al. 2020), edm (Karras et al. 2022) or flow (flow matching); default: edm for images, ddpm for 2-D points, and ddpm whenever a ddpm-only setting (learn_sigma, loss_weighting, prediction, schedule) is given")
    process_options: dict[str, Any] = Field(default_factory=dict, description="options of the process (edm: sigma_data, P_mean, ...; flow: t_sampling, ...)")
    method: Optional[str] = Field(None, description="few-step method plugin (methods.py): consistency (easy consistency tuning / distillation) or meanflow; none: a diffusion model")
    method_options: dict[str, Any] = Field(default_factory=dict, description="options of the few-step method")
    teacher: Optional[Path] = Field(None, description="run directory whose EMA weights the network starts from (`ddpmctl distill`), and whose network the method may call")
    schedule: str = Field("linear", description="noise schedule plugin name (the ddpm process)")
    schedule_options: dict[str, Any] = Field(default_factory=dict, description="options of the schedule (T, ...)")
    prediction: Literal["eps", "x0", "v"] = Field("eps", description="what the network predicts (the ddpm process)")
    cond: Literal["none", "class"] = Field("none", description="class-conditional training")
    p_uncond: float = Field(0.1, ge=0, le=1, description="probability of dropping the label (classifier-free guidance)")
    learn_sigma: bool = Field(False, description="also learn the reverse-process variance (Nichol & Dhariwal 2021), hybrid loss")
    vlb_weight: float = Field(0.001, ge=0, description="lambda of the hybrid loss L_simple + lambda L_vlb (with learn_sigma)")
    loss_weighting: Literal["none", "min-snr"] = Field("none", description="weighting of the loss over timesteps: none (L_simple, DDPM Algorithm 1) or min-snr (min-SNR-gamma, Hang et al. 2023)")
    snr_gamma: float = Field(5.0, gt=0, description="gamma of min-SNR-gamma weighting: the x0 loss is weighted min(SNR_t, gamma)")
    steps: Optional[int] = Field(None, ge=1, description="training iterations")
    batch_size: Optional[int] = Field(None, ge=1, description="examples per iteration")
    lr: Optional[float] = Field(None, gt=0, description="AdamW peak learning rate")
    warmup: int = Field(200, ge=0, description="linear learning-rate warm-up, in iterations")
    lr_decay: Literal["none", "cosine"] = Field("cosine", description="learning-rate decay after warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of the weights used for sampling")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="a NaN/inf loss or gradient: stop the run (the last good checkpoint is kept) or skip that step (at most 20 in a row)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of weights, batches and noise")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="iterations between checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept on disk")
    log_every: int = Field(50, ge=1, description="iterations between loss records")
    sample_every: Optional[int] = Field(None, ge=0, description="iterations between sample grids in runs/<name>/grids/ (0: never; default: 500 for images, never for points)")
    eval_every: Optional[int] = Field(None, ge=0, description="iterations between quality evaluations (fixed-seed samples of the EMA weights, scored into metrics.jsonl; 0: never; default: 500 with until_metric, else never)")
    eval_metric: Optional[str] = Field(None, description="metric plugin of the evaluations (default: wasserstein for 2-D, classifier-fid for 1-channel images, else fid)")
    eval_options: dict[str, Any] = Field(default_factory=dict, description="options of the evaluation metric")
    eval_n: Optional[int] = Field(None, ge=2, description="samples per evaluation (default: 500 for 2-D, 256 for images)")
    eval_sampler: str = Field("ddim", description="sampler plugin of the evaluations")
    eval_steps: Optional[int] = Field(None, ge=1, description="denoising steps of the evaluations (default: 50 for 2-D, 25 for images; at most T)")
    until_loss: Optional[float] = Field(None, ge=0, description="stop when the smoothed loss (mean of the last 5 logged losses) is at most this (0: off)")
    until_metric: Optional[str] = Field(None, description="stop when an evaluation reaches NAME<=X or NAME>=X, e.g. wasserstein<=0.1 or w2<=0.1 (none: off)")
    max_time: Optional[float] = Field(None, ge=0, description="stop when the run's wall time reaches this many seconds; also 90s, 15m, 1h (0: no limit)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="torch CPU threads of each process (default: torch's, or the cores divided among the processes of a torchrun launch)")
    compile: bool = Field(False, description="run the network through torch.compile: a slow first step, then faster ones")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast of the network in training (auto: bf16 for images on CPUs with AMX, else fp32, TF32 on CUDA: bf16 was 30x slower on a CPU without bf16 instructions and 0.82-0.91x as fast on an H200 at the default sizes)")
    runs_dir: Path = Field(Path("runs"), description="where run directories are made")
    name: Optional[str] = Field(None, description="run name (default: <data>-<date>-<time>)")
    data_dir: Optional[Path] = Field(None, description="where datasets are stored (default: ~/.cache/ddpmctl/data)")
    latent: Optional[Path] = Field(None, description="an autoencoder run (`ddpmctl autoencoder train`): train on its latents of the data (latent diffusion, Rombach et al. 2022); samples are decoded to images")
    tracker: Optional[str] = Field(None, description="experiment tracker plugin that also receives the metrics.jsonl records and the sample grids: tensorboard (event files in runs/<name>/tensorboard/; needs pip install \"ddpmctl[tensorboard]\"); none: off")
    tracker_options: dict[str, Any] = Field(default_factory=dict, description="options of the tracker (tensorboard: flush_secs)")

    @field_validator("tracker", mode="before")
    @classmethod
    def _tracker(cls, v):
        return None if v is None or str(v).strip().lower() in ("", "none", "off") else v

    @field_validator("until_metric", mode="before")
    @classmethod
    def _threshold(cls, v):
        if v is None or str(v).strip().lower() in ("", "none", "off"):
            return None
        return str(Threshold.parse(v))



AE_ENV_PREFIX = ENV_PREFIX + "AE_"


class AutoencoderSettings(_Base):
    """Everything `ddpmctl autoencoder train` needs: the KL-regularised autoencoder of latent
    diffusion (Rombach et al. 2022), trained with an L1 or L2 reconstruction loss plus
    ``kl_weight`` times the KL divergence of q(z | x) from N(0, I). Environment: DDPMCTL_AE_*."""

    model_config = SettingsConfigDict(env_prefix=AE_ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True, allow_inf_nan=False)

    data: str = Field("fashion-mnist", description="dataset plugin name (images)")
    data_options: dict[str, Any] = Field(default_factory=dict, description="options of the dataset plugin (for example size = 32)")
    autoencoder: str = Field("kl", description="autoencoder plugin name")
    autoencoder_options: dict[str, Any] = Field(default_factory=dict, description="options of the autoencoder plugin (channels, channel_mult, latent_channels, ...)")
    loss: Literal["l1", "l2"] = Field("l1", description="reconstruction loss per pixel: l1 (as the paper) or l2")
    kl_weight: float = Field(1e-6, ge=0, description="weight of the KL term per latent value against the per-pixel reconstruction loss (the paper's KL-f4: 1e-6)")
    steps: int = Field(3000, ge=1, description="training iterations")
    batch_size: int = Field(64, ge=1, description="images per iteration")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    warmup: int = Field(100, ge=0, description="linear learning-rate warm-up, in iterations")
    lr_decay: Literal["none", "cosine"] = Field("cosine", description="learning-rate decay after warm-up")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of the weights used to encode and decode")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of weights, batches and noise")
    checkpoint_every: int = Field(500, ge=1, description="iterations between checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept on disk")
    log_every: int = Field(50, ge=1, description="iterations between loss records")
    eval_n: int = Field(1000, ge=2, description="held-out images whose reconstruction MSE and PSNR are measured at each checkpoint")
    max_time: Optional[float] = Field(None, ge=0, description="stop when the run's wall time reaches this many seconds; also 90s, 15m, 1h (0: no limit)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="torch CPU threads")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast in training (auto: bf16 on CPUs with AMX, else fp32)")
    runs_dir: Path = Field(Path("runs"), description="where run directories are made")
    name: Optional[str] = Field(None, description="run name (default: ae-<data>-<date>-<time>)")
    data_dir: Optional[Path] = Field(None, description="where datasets are stored (default: ~/.cache/ddpmctl/data)")



# Keys of an autoencoder run that may change when it is resumed.
AE_RESUMABLE = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "eval_n", "max_time", "device", "threads", "precision", "runs_dir", "name", "data_dir"}


PHASE_DEFAULTS = {
    # process: EDM has the best phase-2 quality from 7.5 minutes of training on (issue 15,
    # docs/benchmarks.md); on 2-D data ddpm meets issue 2's bar on every dataset.
    "points": {"process": "ddpm", "network": "mlp", "steps": 8000, "batch_size": 512, "lr": 2e-3, "checkpoint_every": 1000, "eval_n": 500, "eval_steps": 50},
    # images: sized for `ddpmctl train --data mnist16 --digits 0` in well under 15 minutes on 2 CPU cores
    "images": {"process": "edm", "network": "unet", "steps": 2500, "batch_size": 64, "lr": 1e-3, "checkpoint_every": 500, "sample_every": 500,
               "eval_n": 256, "eval_steps": 25},
}
PHASE_DEFAULTS["latents"] = PHASE_DEFAULTS["images"]  # a latent run (latent.py): the image defaults, on the autoencoder's latents

# Keys that may change when a run is resumed; any other difference is an incompatible config.
RESUMABLE = {"steps", "on_nonfinite", "checkpoint_every", "keep_checkpoints", "log_every", "sample_every", "device", "runs_dir", "name", "data_dir"}
# How fast a step runs changes no weights either.
RESUMABLE |= {"threads", "compile", "precision"}
# Watching and stopping change no weights: evaluations and stop criteria may change on resume too.
RESUMABLE |= {"eval_every", "eval_metric", "eval_options", "eval_n", "eval_sampler", "eval_steps", "until_loss", "until_metric", "max_time"}
# Nor does where the records are also sent.
RESUMABLE |= {"tracker", "tracker_options"}


def load_settings(cls: type[_Base], config_file: Path | None = None, base: dict | None = None, **flags) -> _Base:
    """Build settings from the layers; ``base`` (a saved run config) sits below the TOML file."""
    if config_file is not None:
        check_config_file(Path(config_file))
    check_env(cls)
    token = _toml_file.set(Path(config_file) if config_file else None)
    try:
        if base is None:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        # saved config < TOML < env < flags: validate the layers above, then lay them over it.
        above = cls(**{k: v for k, v in flags.items() if v is not None})
        explicit = above.model_fields_set
        merged = dict(base)
        for key in explicit:
            value = getattr(above, key)
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        _toml_file.set(None)
        return cls.model_validate(merged)
    except ValidationError as err:
        where = f" (from {config_file})" if config_file else ""
        raise ConfigError(format_validation_error(err, f"configuration{where}", env_origin(cls, flags)) + ".") from None
    except SettingsError as exc:  # a complex setting (a dict) whose environment variable is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        var = cls.model_config["env_prefix"] + (field[1].upper() if field else "*")
        raise ConfigError(f"environment variable {var} is not valid JSON; set it to a JSON object such as '{{\"n\": 500}}' or unset it.") from None
    except Exception as exc:  # a TOML syntax error
        if type(exc).__name__ == "TOMLDecodeError":
            raise ConfigError(f"config file {config_file} is not valid TOML ({exc}); fix that line or start from a config.json of a run.") from None
        raise
    finally:
        _toml_file.reset(token)


def check_config_file(path: Path) -> None:
    """A --config file that exists, is a file and is UTF-8 text without a byte-order mark."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a TOML file (--config FILE.toml).")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path (--config FILE.toml).")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ConfigError(f"config file {path} starts with a byte-order mark, which TOML does not allow; save it as UTF-8 without BOM.")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); save it as UTF-8.") from None


def env_origin(cls: type[_Base], flags: dict) -> Callable[[str], Optional[str]]:
    """For error messages: the environment variable a setting came from, when no flag set it."""
    prefix = cls.model_config["env_prefix"]

    def origin(field: str) -> Optional[str]:
        var = prefix + field.upper()
        return f"environment variable {var}" if flags.get(field) is None and var in os.environ else None

    return origin


def resumed(cls: type[_Base], config_file: Path | None, saved: dict, resumable: set[str], run: Path, **flags) -> _Base:
    """Settings of a resumed run: its ``saved`` settings below the other layers; any change to a
    key outside ``resumable`` is refused with one sentence naming each change."""
    s = load_settings(cls, config_file, base=saved, **flags)
    now = s.model_dump(mode="json")
    diff = [k for k in now if k not in resumable and now[k] != saved.get(k)]
    if diff:
        what = "; ".join(f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in diff)
        raise ConfigError(f"cannot resume {run} with a different config ({what}); drop those settings or start a new run with --name.")
    return s


def saved(cls: type[_Base], values: dict) -> _Base:
    """Settings exactly as a run saved them: no environment variable or TOML file takes part."""
    token = _layers.set(False)
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "saved configuration")) from None
    finally:
        _layers.reset(token)


def check_env(cls: type[_Base]) -> None:
    """Unknown DDPMCTL_* variables are errors too (a typo would otherwise be silently ignored)."""
    prefix = cls.model_config["env_prefix"]
    known = {prefix + f.upper() for f in cls.model_fields} | {ENV_PREFIX + "DEBUG"}
    others = {AE_ENV_PREFIX} - {prefix}  # the variables of another command's settings
    for var in os.environ:
        if var.startswith(prefix) and not any(var.startswith(o) for o in others) and var.split("__")[0] not in known and var not in GLOBAL_ENV:
            fields = ", ".join(sorted(prefix + f.upper() for f in cls.model_fields))
            raise ConfigError(f"unknown environment variable {var}; known: {fields}.")


GLOBAL_ENV = {"DDPMCTL_DATA_DIR", "DDPMCTL_DEBUG", "DDPMCTL_RUNS_DIR"}


def data_dir() -> Path:
    """Where datasets live: $DDPMCTL_DATA_DIR, else ~/.cache/ddpmctl/data."""
    env = os.environ.get("DDPMCTL_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpmctl" / "data"
