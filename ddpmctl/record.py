"""The typed record of a run: what RUN/config.json holds, read into one object.

    {"config":     the resolved TrainSettings (every value the run was trained with),
     "data":       {"shape", "num_classes", "kind", "size", "absmax"},
     "plugins":    {kind: {"name", "dist", "version"}},
     "versions":   {"ddpmctl", "torch", ...},
     "parameters": number of network parameters,
     "latent":     a latent run's autoencoder: {"autoencoder", "content_sha256", "shape", "scale_factor"}}

Runs written by earlier versions lack some keys (``absmax``, ``parameters``, ``latent``); they read
as None. An autoencoder run (`ddpmctl autoencoder train`) writes an ``AutoencoderRecord``
instead: {"autoencoder": settings, "data", "latent_shape", "plugins", "versions", "parameters"}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

from ddpmctl.config import AutoencoderSettings, TrainSettings, saved
from ddpmctl.errors import DdpmctlError, RunError


@dataclass(frozen=True)
class DataInfo:
    """What a model was trained on: enough to sample it without loading the data."""

    shape: tuple[int, ...]  # (2,) for points, (C, H, W) for images
    num_classes: int
    kind: Literal["points", "images"]
    size: Optional[int] = None  # training examples
    absmax: Optional[float] = None  # largest |coordinate| of the training data (the default clip of 2-D models)

    @classmethod
    def of(cls, ds) -> DataInfo:
        """The description of a built datasets.base.Dataset."""
        return cls(tuple(ds.shape), ds.num_classes, ds.kind, len(ds), round(float(ds.x.abs().max()), 4))

    def to_json(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    dist: Optional[str] = None
    version: Optional[str] = None


@dataclass(frozen=True)
class LatentInfo:
    """A latent run's autoencoder: where it came from, which weights (their content hash; a copy
    travels in RUN/autoencoder.safetensors), the latent shape the network sees and the scale
    factor that brings the latents to unit variance."""

    autoencoder: str
    content_sha256: str
    shape: tuple[int, ...]
    scale_factor: float

    def to_json(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> LatentInfo:
        return cls(str(d["autoencoder"]), str(d["content_sha256"]), tuple(int(v) for v in d["shape"]), float(d["scale_factor"]))


@dataclass(frozen=True)
class RunRecord:
    config: TrainSettings
    data: DataInfo
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    parameters: Optional[int] = None
    latent: Optional[LatentInfo] = None

    @property
    def num_classes(self) -> int:
        """Classes the model is conditioned on: 0 for an unconditional model."""
        return self.data.num_classes if self.config.cond == "class" else 0

    @property
    def model_shape(self) -> tuple[int, ...]:
        """What the network denoises: the latent shape of a latent run, else the data's shape."""
        return self.latent.shape if self.latent is not None else self.data.shape

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "data": self.data.to_json(),
            "plugins": {k: asdict(v) for k, v in self.plugins.items()},
            "versions": dict(self.versions),
            "parameters": self.parameters,
            **({"latent": self.latent.to_json()} if self.latent is not None else {}),
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> RunRecord:
        """Read a config.json's content; ``where`` names the file in the one sentence of a failure."""
        if isinstance(raw, dict) and "autoencoder" in raw:
            raise RunError(f"{where} belongs to an autoencoder run, not a diffusion model; train a model on its latents with `ddpmctl train --latent DIR`.")
        try:
            if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict) or not isinstance(raw.get("data"), dict):
                raise ValueError("it has no config and data tables")
            d = raw["data"]
            data = DataInfo(tuple(int(v) for v in d["shape"]), int(d["num_classes"]), d["kind"], d.get("size"), d.get("absmax"))
            if data.kind not in ("points", "images"):
                raise ValueError(f"data kind {data.kind!r} is neither points nor images")
            plugins = {k: PluginInfo(v["name"], v.get("dist"), v.get("version")) for k, v in (raw.get("plugins") or {}).items()}
            config = {"process": "ddpm", **raw["config"]}  # runs written before processes existed are ddpm runs
            latent = LatentInfo.from_json(raw["latent"]) if raw.get("latent") else None
            return cls(saved(TrainSettings, config), data, plugins, dict(raw.get("versions") or {}), raw.get("parameters"), latent)
        except DdpmctlError as exc:
            raise RunError(f"{where} does not hold a config this version can read ({exc}); it may come from another ddpmctl version.") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{where} is not a ddpmctl run record ({exc}); restore it or train a new run.") from None


@dataclass(frozen=True)
class AutoencoderRecord:
    """config.json of an autoencoder run: its settings, the images it encodes, the latent shape."""

    settings: AutoencoderSettings
    data: DataInfo
    latent_shape: tuple[int, ...]
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    parameters: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "autoencoder": self.settings.model_dump(mode="json"),
            "data": self.data.to_json(),
            "latent_shape": list(self.latent_shape),
            "plugins": {k: asdict(v) for k, v in self.plugins.items()},
            "versions": dict(self.versions),
            "parameters": self.parameters,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> AutoencoderRecord:
        """Read an autoencoder run's config.json; ``where`` names the file in the one sentence of a failure."""
        if isinstance(raw, dict) and "config" in raw and "autoencoder" not in raw:
            raise RunError(f"{where} belongs to a diffusion run, not an autoencoder; pass a run made by `ddpmctl autoencoder train`.")
        try:
            d = raw["data"]
            data = DataInfo(tuple(int(v) for v in d["shape"]), int(d["num_classes"]), d["kind"], d.get("size"), d.get("absmax"))
            plugins = {k: PluginInfo(v["name"], v.get("dist"), v.get("version")) for k, v in (raw.get("plugins") or {}).items()}
            return cls(saved(AutoencoderSettings, raw["autoencoder"]), data, tuple(int(v) for v in raw["latent_shape"]), plugins,
                       dict(raw.get("versions") or {}), raw.get("parameters"))
        except DdpmctlError as exc:
            raise RunError(f"{where} does not hold an autoencoder config this version can read ({exc}); it may come from another ddpmctl version.") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{where} is not a ddpmctl autoencoder record ({exc}); restore it or train a new autoencoder.") from None
