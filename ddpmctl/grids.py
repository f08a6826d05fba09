"""Sample grids of image models: the previews written during training, so convergence shows.

``preview(...)`` draws a fixed set of samples (fixed seed, so grids at different steps are
comparable: same x_T, same noise) from the EMA weights with the ancestral DDPM sampler
respaced to a few steps (Nichol & Dhariwal 2021, sec. 4), or a few-step model in one step,
and saves them as one PNG.
A class-conditional model gets one row per class (the first ten classes at most).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ddpmctl import registry
from ddpmctl.denoiser import Denoiser
from ddpmctl.samplers.base import randn, sigma_grid
from ddpmctl.samplers.fewstep import levels


def preview_labels(num_classes: int, per_class: int = 8) -> torch.Tensor | None:
    """Row k of the grid is class k: (min(num_classes, 10) * per_class,) labels, or None."""
    if num_classes <= 0:
        return None
    return torch.arange(min(num_classes, 10)).repeat_interleave(per_class)


@torch.no_grad()
def preview(den: Denoiser, data_shape: tuple[int, ...], path: Path, n: int = 64, steps: int = 50, seed: int = 0, sampler: str = "ddpm",
            decode: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> Path:
    """Save a grid of samples of the denoiser ``den`` (its network kept in its current mode: use
    the EMA copy, in eval): each class's row for a conditional model. ``data_shape`` is what the
    network denoises; ``decode`` turns it into images (a latent model's autoencoder)."""
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
    return plots.image_grid(decode(x0).float().cpu(), path, nrow=nrow)


FEW_STEP_ROWS = (1, 2, 4)  # the step counts of a few-step model's picture


@torch.no_grad()
def few_step_picture(model, path: Path, teacher=None, seed: int = 0, n: int = 128) -> Path:
    """What a few-step model (pipeline.Model with a method) does, from fixed noise.

    Images: one row each of its 1-, 2- and 4-step samples from the same x_T (and, at 2 and 4
    steps, the same fresh noise), a class per column for a conditional model. 2-D points: its
    one-step map, an arrow from each of ``n`` noise points to its sample, beside the ``teacher``'s
    (a pipeline.Model) probability-flow ODE trajectories from the same noise and the same level
    (EDM's Heun sampler, 18 steps); both drawn in the variance-preserving coordinates
    x / sqrt(1 + sigma^2), which go from the noise eps to the sample.
    """
    from ddpmctl import plots

    den, device = model.denoiser(), model.device
    few, options = registry.resolve("sampler", "few-step", None)
    name = model.run.path.name if model.run is not None else "model"

    def sample(den, x_T, steps, sampler=few, opts=options, callback=None, y=None):
        return sampler(den, x_T, steps, torch.Generator(device=device).manual_seed(seed + 1), callback, y, **opts.model_dump())[0]

    if model.data.kind != "points":
        y = torch.arange(16, device=device) % model.num_classes if model.num_classes else None
        x_T = randn((16, *model.shape), torch.Generator(device=device).manual_seed(seed), device)
        rows = [(f"{k} step{'s' * (k > 1)}", model.decode(sample(den, x_T, k, y=y)).float().cpu()) for k in FEW_STEP_ROWS]
        return plots.image_rows(rows, path, title=f"{name}: the same noise in 1, 2 and 4 steps")
    x_T = randn((n, *model.data.shape), torch.Generator(device=device).manual_seed(seed), device)
    ends = sample(den, x_T, 1)
    top = levels(model.process, 1, "auto", 7.0, None, den.few_step.get("sigma_max"))[0]  # where the one step starts
    paths = None
    if teacher is not None:
        heun, o = registry.resolve("sampler", "heun", {"sigma_max": top})
        grid = sigma_grid(teacher.process, 18, o.spacing, o.rho, o.sigma_min, o.sigma_max).tolist() + [0.0]  # heun's levels: frame i is at grid[i]
        frames = [x_T.double()]  # x / sqrt(1 + sigma^2) at sigma = top: x_T, up to 1 / top^2
        scale = teacher.process.scale

        def keep(i, n_steps, sigma, x_t, x0_hat):
            s = torch.tensor(grid[i], dtype=torch.float64)
            frames.append(x_t.double() / scale(s) / (1 + s**2).sqrt())

        sample(teacher.denoiser(), x_T, 18, heun, o, keep)
        paths = torch.stack(frames).float().cpu()
    data = model.dataset().fresh(2000, seed)[0]
    return plots.jump_map_2d(x_T.float().cpu(), ends.float().cpu(), data, path, paths,
                             title=f"{name}: one step from sigma = {top:g} beside the teacher's ODE from the same noise" if paths is not None
                             else f"{name}: one step from sigma = {top:g}")
