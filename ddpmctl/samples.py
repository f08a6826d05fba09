"""Samples of a model and the one place their files are written and read.

    RUN/samples/<sampler>-<steps>steps-seed<seed>[-classK][-wS].npz
      "samples": float32 (N, 2) points, or uint8 (N, C, H, W) pixels with x = pixel / 127.5 - 1
      "labels":  int64 (N,), class-conditional samples only
      "record":  JSON of how they were drawn (sampler, steps, NFE, seed, guidance, clipping, ...)

A folder written by `ddpmctl sample --export` (export.py) reads back the same way.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ddpmctl import export
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.datasets.base import to_float, to_uint8
from ddpmctl.errors import DataError

UNKNOWN = {"sampler": "?", "steps": "?", "nfe": "?"}  # the record of samples that came without one


@dataclass
class Samples:
    """``x`` (N, *shape) float32 on the CPU: points, or images in [-1, 1]; ``labels`` (N,) int64
    or None; ``record``: how they were drawn; ``trajectory``: (label, x_t) frames of the reverse
    process when asked for (kept in memory, not in the file)."""

    x: torch.Tensor
    labels: Optional[torch.Tensor] = None
    record: dict = field(default_factory=dict)
    trajectory: list = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def images(self) -> bool:
        return self.x.dim() == 4

    def save(self, path: Path) -> Path:
        """Write the .npz atomically (images as 8-bit pixels, as the data)."""
        record = dict(self.record)
        arrays = {"samples": self.x.float().numpy()}
        if self.images:
            arrays["samples"] = to_uint8(self.x).numpy()
            record = {**record, "format": "uint8 NCHW, x = pixel / 127.5 - 1",
                      "classes": None if self.labels is None else sorted(set(self.labels.tolist()))}
        if self.labels is not None:
            arrays["labels"] = self.labels.numpy()
        buf = io.BytesIO()
        np.savez(buf, record=json.dumps(record), **arrays)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: Path) -> Samples:
        """A .npz of `ddpmctl sample`, or a folder of `ddpmctl sample --export`."""
        path = Path(path)
        if path.is_dir():
            pixels, labels, manifest = export.read(path)
            return cls(to_float(pixels), labels, manifest.get("sampling", dict(UNKNOWN)))
        if not path.is_file():
            raise DataError(f"samples file {path} does not exist; make one with `ddpmctl sample RUN`.")
        try:
            with np.load(path, allow_pickle=False) as f:
                raw = f["samples"]
                record = json.loads(str(f["record"])) if "record" in f else dict(UNKNOWN)
                labels = torch.from_numpy(f["labels"]).long() if "labels" in f else None
        except (ValueError, KeyError, OSError) as exc:
            raise DataError(f"{path} is not a samples file from `ddpmctl sample` ({exc}).") from None
        x = torch.from_numpy(raw)
        return cls(to_float(x) if raw.dtype == np.uint8 else x.float(), labels, record)
