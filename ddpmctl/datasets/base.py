"""The dataset contract: a tensor of examples, its labels, its shape, and fresh draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class Dataset:
    """Examples ``x`` (N, *shape), float32; images are scaled to [-1, 1].

    ``y`` holds integer labels when the data has classes (``num_classes`` > 0).
    ``fresh(n, seed)`` returns (x, y) drawn independently of ``x``: new samples for a
    distribution that can be sampled, the held-out split for a finite set (then at most
    ``len(split)`` distinct examples, never repeats: see ``draw``). Metric floors compare such
    draws with the data.
    """

    name: str
    x: torch.Tensor
    y: Optional[torch.Tensor] = None
    num_classes: int = 0
    kind: str = "points"  # "points" (2-D) or "images"
    fresh_fn: Optional[Callable[[int, int], tuple[torch.Tensor, Optional[torch.Tensor]]]] = field(default=None, repr=False)
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def fresh(self, n: int, seed: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.fresh_fn is None:
            raise NotImplementedError(f"dataset {self.name!r} cannot draw a fresh set")
        return self.fresh_fn(n, seed)


def draw(pixels: torch.Tensor, labels: Optional[torch.Tensor], n: int, seed: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A seeded subset of ``min(n, len(pixels))`` distinct 8-bit images of a finite split, as floats.
    Without replacement: a floor measured on repeated images would be inflated, so a caller that
    gets fewer than it asked for says so (``metrics.fid.held_out``)."""
    idx = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))[:n]
    return to_float(pixels[idx]), (None if labels is None else labels[idx])


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit pixels [0, 255] -> float32 images in [-1, 1]: x = pixel / 127.5 - 1."""
    return pixels.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> 8-bit pixels: round((x + 1) * 127.5), clamped to [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
