"""Sample grids of image models: the previews written during training, so convergence shows.

``preview(...)`` draws a fixed set of samples (fixed seed, so grids at different steps are
comparable: same x_T, same noise) from the EMA weights with the ancestral DDPM sampler
respaced to a few steps (Nichol & Dhariwal 2021, sec. 4), or a few-step model in one step,
and saves them as one PNG.
A class-conditional model gets one row per class (the first ten classes at most).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpmctl import registry
from ddpmctl.denoiser import Denoiser
from ddpmctl.samplers.base import randn


def preview_labels(num_classes: int, per_class: int = 8) -> torch.Tensor | None:
    """Row k of the grid is class k: (min(num_classes, 10) * per_class,) labels, or None."""
    if num_classes <= 0:
        return None
    return torch.arange(min(num_classes, 10)).repeat_interleave(per_class)


@torch.no_grad()
def preview(den: Denoiser, data_shape: tuple[int, ...], path: Path, n: int = 64, steps: int = 50, seed: int = 0, sampler: str = "ddpm") -> Path:
    """Save a grid of samples of the denoiser ``den`` (its network kept in its current mode: use
    the EMA copy, in eval): each class's row for a conditional model."""
    from ddpmctl import plots

    device = next(den.net.parameters()).device
    y = preview_labels(den.num_classes)
    if y is not None:
        n, nrow = len(y), len(y) // min(den.num_classes, 10)
        y = y.to(device)
    else:
        nrow = None
    g = torch.Generator(device=device).manual_seed(seed)
    x_T = randn((n, *data_shape), g, device)
    fn, opts = registry.resolve("sampler", sampler, None)
    x0, _ = fn(den, x_T, min(steps, den.process.max_steps), g, None, y, **opts.model_dump())
    return plots.image_grid(x0.float().cpu(), path, nrow=nrow)
