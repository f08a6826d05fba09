"""The few-step sampler: jumps from noise level to noise level with the model's x0_hat.

    x_{i+1} = x0_hat(x_i; sigma_i -> sigma_{i+1}) + sigma_{i+1} (sqrt(1 - gamma^2) eps_hat + gamma z)

on the scaled state (processes.py), down to sigma = 0 at the last step. gamma = 1 is the multistep
sampling of consistency models (Song et al. 2023, Algorithm 1: fresh noise at the next level),
gamma = 0 a deterministic jump (DDIM's step, which for an average-velocity model such as
MeanFlow's is its exact jump z_r = z_t - (t - r) u; Kim et al. 2024 (CTM) sec. 4 for the family).
The default gamma is the model's own (methods.py): 1 for consistency models, 0 for MeanFlow and
for a model without a few-step method; so is the level the first jump starts from. One network
evaluation a step.

The levels: the highest, then ``steps - 1`` more, the spacing's grid of ``steps + 1`` levels
without its lowest (two steps on EDM's Karras grid: sigma = 80, then 2.5), or given as
``sigmas`` (the intermediate levels, e.g. [0.8]).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, Spacing, check_finite, randn_like, sigma_grid, snap, unscaled


class FewStepOptions(PluginOptions):
    gamma: float | None = Field(None, ge=0, le=1, description="noise refreshed at each level: 1 fresh noise (consistency sampling), 0 deterministic jumps (default: the model's own)")
    spacing: Spacing = Field("auto", description="grid of the intermediate levels (samplers/base.py)")
    rho: float = Field(7.0, gt=0, description="rho of the karras spacing")
    sigmas: list[float] | None = Field(None, description="the intermediate levels themselves, decreasing (steps - 1 of them)")
    sigma_max: float | None = Field(None, gt=0, description="the level the first jump starts from (default: the model's method's, else the process's highest; at most the process's highest)")


def levels(process, steps: int, spacing: str, rho: float, sigmas: list[float] | None, sigma_max: float | None = None) -> list[float]:
    """The first level (sigma_max) and the intermediate ones, decreasing; then 0."""
    top = snap(process, min(sigma_max or process.sigma_max, process.sigma_max))
    if sigmas is not None:
        if len(sigmas) != steps - 1 or any(b >= a for a, b in zip([top, *sigmas], sigmas)):
            raise ValueError(f"sigmas must be {steps - 1} decreasing levels below {top:g} for {steps} steps, got {sigmas}")
        return [top, *(snap(process, s) for s in sigmas), 0.0]
    if steps == 1:
        return [top, 0.0]
    grid = sigma_grid(process, steps + 1, spacing, rho, sigma_max=top).tolist()
    return grid[:steps] + [0.0]


@with_options(FewStepOptions)
@torch.no_grad()
def few_step(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
    gamma: float | None = None,
    spacing: str = "auto",
    rho: float = 7.0,
    sigmas: list[float] | None = None,
    sigma_max: float | None = None,
) -> tuple[torch.Tensor, int]:
    """``steps`` jumps (default 1); returns (x_0, network evaluations)."""
    process = denoiser.process
    S = steps or 1
    own = getattr(denoiser, "few_step", {})  # the model's method's defaults
    gamma = own.get("gamma", 0.0) if gamma is None else gamma
    sig = levels(process, S, spacing, rho, sigmas, sigma_max or own.get("sigma_max"))
    x = x_T.to(torch.float64) * process.prior_std(sig[0])
    for i in range(S):
        s, s_next = sig[i], sig[i + 1]
        pred = denoiser(x, s, y, sigma_next=s_next)
        x = pred.x0
        if s_next > 0:
            eps = pred.eps if gamma == 0 else (1 - gamma**2) ** 0.5 * pred.eps + gamma * randn_like(x, generator)
            x = x + s_next * eps
        check_finite(x, i + 1, s, "few-step")
        if callback is not None:
            callback(i + 1, S, s, unscaled(process, x, s_next) if s_next > 0 else x, pred.x0)
    return x, S


few_step.default_steps = 1  # what pipeline.sample asks for when no step count is given
