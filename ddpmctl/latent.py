"""Latent diffusion (Rombach et al. 2022): images encoded by an autoencoder, diffusion on the latents.

    ae = Autoencoder.load("runs/ae")       # an autoencoder run's newest EMA weights and scale factor
    z = ae.encode(x)                       # scale_factor * the mean of q(z | x): (N, c, h, w)
    x = ae.decode(z)                       # images in [-1, 1]
    z_ds = latent_dataset(ae, ds)          # the training set encoded once, cached under data_dir/cache/latents
    ae.save(RUN / "autoencoder.safetensors")
    Autoencoder.from_file(RUN / "autoencoder.safetensors")   # the copy a latent run keeps

The latents are multiplied by the scale factor 1 / std(z) of the training images' latents (the
paper's sec. 4.3.2 and appendix G), computed with each checkpoint of the autoencoder, so the
noise levels of a process mean for latents what they mean for unit-scale data. The dataset is
encoded with the mean of q(z | x) (deterministic, so it can be cached). A latent run keeps a
copy of its autoencoder's EMA weights and samples without the autoencoder's directory; the
copy's content hash names those weights in the run's config.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save

from ddpmctl import checkpoint, registry
from ddpmctl.checkpoint import atomic_write_bytes, content_hash, split
from ddpmctl.config import data_dir
from ddpmctl.datasets.base import Dataset
from ddpmctl.devices import channels_last_pays
from ddpmctl.errors import CheckpointError, DataError, DdpmctlError, RunError
from ddpmctl.record import AutoencoderRecord, LatentInfo
from ddpmctl.run import RunDir

SCALE_IMAGES = 2048  # training images whose latents set the scale factor (a fixed, seeded subset)
COPY_NAME = "autoencoder.safetensors"  # a latent run's copy of its autoencoder


def build_autoencoder(record: AutoencoderRecord) -> torch.nn.Module:
    s = record.settings
    return registry.build("autoencoder", s.autoencoder, s.autoencoder_options, data_shape=record.data.shape)


def subset(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx]


@torch.no_grad()
def encode_mean(net: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The mean of q(z | x) for every image of ``x``, on x's device; the network stays where it is."""
    device = next(net.parameters()).device
    out = [net.encode(x[i : i + batch_size].to(device, torch.float32))[0].float().to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def scale_factor(net: torch.nn.Module, x: torch.Tensor) -> float:
    """1 / std of the latents of (a seeded subset of) the training images ``x``: unit-variance latents."""
    z = encode_mean(net, subset(x, SCALE_IMAGES))
    return float(1.0 / z.flatten().std().clamp_min(1e-8))


@dataclass
class Autoencoder:
    """Trained weights (the EMA copy) ready to encode and decode, with their scale factor."""

    record: AutoencoderRecord
    net: torch.nn.Module
    scale_factor: float
    content_sha256: str  # of the EMA weights: what a latent run and the latent cache are keyed by
    source: str  # the autoencoder run directory the weights came from

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.record.latent_shape

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def info(self) -> LatentInfo:
        return LatentInfo(self.source, self.content_sha256, tuple(self.latent_shape), self.scale_factor)

    def encode(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents z = scale_factor * E[q(z | x)], on x's device."""
        return encode_mean(self.net, x, batch_size) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Scaled latents (a sampler's float64 too) -> float32 images, clamped to [-1, 1], on z's device."""
        out = [self.net.decode(z[i : i + batch_size].to(self.device, torch.float32) / self.scale_factor).float().clamp(-1, 1).to(z.device)
               for i in range(0, len(z), batch_size)]
        return torch.cat(out) if out else z.new_zeros((0, *self.record.data.shape))

    # -- files --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The copy a latent run keeps: the EMA weights, the autoencoder's record and scale factor."""
        tensors = {f"ema/{k}": v for k, v in self.net.state_dict().items()}
        checkpoint.save(path, tensors, {"autoencoder": self.record.to_json(), "scale_factor": self.scale_factor, "source": self.source})

    @classmethod
    def from_file(cls, path: Path, device: torch.device | str = "cpu") -> Autoencoder:
        """Read a copy written by ``save`` (a damaged or missing file is one sentence)."""
        if not Path(path).is_file():
            raise RunError(f"{path} is missing: this latent run cannot decode its samples; train the run again with --latent.")
        tensors, meta = checkpoint.load(path)
        record = AutoencoderRecord.from_json(meta.get("autoencoder"), str(path))
        return cls._of(record, split(tensors, "ema"), float(meta["scale_factor"]), str(meta.get("source", path)), device, path)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> Autoencoder:
        """An autoencoder run's newest readable checkpoint (its EMA weights and scale factor)."""
        run = open_run(Path(path))
        record = read_record(run)
        if not run.checkpoints():
            raise RunError(f"autoencoder run {run.path} has no checkpoint yet; train it first with `ddpmctl autoencoder train --resume {run.path}`.")
        tensors, meta, ckpt, _ = run.load_checkpoint()
        if "scale_factor" not in meta:
            raise CheckpointError(f"{ckpt} has no scale factor, so it is not an autoencoder checkpoint; train the autoencoder again.")
        return cls._of(record, split(tensors, "ema"), float(meta["scale_factor"]), str(run.path), device, ckpt)

    @classmethod
    def _of(cls, record: AutoencoderRecord, weights: dict, scale: float, source: str, device, where: Path) -> Autoencoder:
        net = build_autoencoder(record)
        try:
            net.load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(f"{where} does not fit the {record.settings.autoencoder} autoencoder of its record ({str(exc).splitlines()[0]}); train the autoencoder again.") from None
        net = net.to(device).eval().requires_grad_(False)
        if channels_last_pays(torch.device(device), training=False):  # 1.5x faster convolutions on this CPU
            net = net.to(memory_format=torch.channels_last)
        return cls(record, net, scale, content_hash(weights), source)


def open_run(path: Path) -> RunDir:
    """An autoencoder run directory, or one sentence saying why ``path`` is not one."""
    if not path.is_dir():
        raise RunError(f"autoencoder directory {path} does not exist; train one with `ddpmctl autoencoder train` or check the path.")
    if not (path / "config.json").is_file():
        raise RunError(f"{path} is not an autoencoder run (no config.json); train one with `ddpmctl autoencoder train`.")
    return RunDir(path)


def read_record(run: RunDir) -> AutoencoderRecord:
    where = run.path / "config.json"
    try:
        raw = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{where} is unreadable ({exc}); restore it or train a new autoencoder.") from None
    return AutoencoderRecord.from_json(raw, str(where))


def check_fits(ae: Autoencoder, ds: Dataset) -> None:
    """Refuse data of another shape than the autoencoder was trained on."""
    want = tuple(ae.record.data.shape)
    if ds.kind != "images" or tuple(ds.shape) != want:
        got = "x".join(map(str, ds.shape)) if ds.kind == "images" else f"{ds.kind}"
        raise DataError(f"the autoencoder {ae.source} encodes {'x'.join(map(str, want))} images ({ae.record.settings.data}), "
                        f"but {ds.name} gives {got}; train an autoencoder on this data (`ddpmctl autoencoder train --data {ds.name}`) or pick a matching one.")


def _cache_path(ae: Autoencoder, ds: Dataset) -> Path:
    h = hashlib.sha256()
    h.update(f"{ae.content_sha256}|{ae.scale_factor!r}|{ds.name}|{json.dumps(ds.info, sort_keys=True, default=str)}|{tuple(ds.x.shape)}".encode())
    h.update(ds.x.contiguous().numpy().tobytes())
    return data_dir() / "cache" / "latents" / f"{ds.name}-{h.hexdigest()[:20]}.safetensors"


def latent_dataset(ae: Autoencoder, ds: Dataset) -> Dataset:
    """The training set ``ds`` as scaled latents (kind "latents"), encoded once and cached."""
    check_fits(ae, ds)
    cache = _cache_path(ae, ds)
    z: Optional[torch.Tensor] = None
    if cache.is_file():
        try:
            z = load_file(cache)["z"]
        except Exception:  # a damaged cache is encoded again
            z = None
    if z is None or z.shape != (len(ds), *ae.latent_shape):
        z = ae.encode(ds.x)
        try:
            atomic_write_bytes(cache, save({"z": z.contiguous()}, metadata={"autoencoder": ae.source, "dataset": ds.name}))
        except DdpmctlError:  # a read-only or full data directory: train without the cache
            pass
    info = {**ds.info, "autoencoder": ae.source, "scale_factor": ae.scale_factor}
    return Dataset(name=f"{ds.name} latents", x=z, y=ds.y, num_classes=ds.num_classes, kind="latents", info=info)
