"""Denoising diffusion implicit models (Song, Meng & Ermon 2021): the generalised reverse
process of eq. 12 on a subsequence of the training timesteps, and its deterministic
inversion (eta = 0) from data to noise."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, check_finite, randn_like, spaced_timesteps


class DDIMOptions(PluginOptions):
    eta: float = Field(0.0, ge=0, le=1, description="0: deterministic DDIM; 1: the ancestral (DDPM, beta-tilde) process")
    spacing: Literal["uniform", "quadratic"] = Field("uniform", description="timestep subsequence tau (DDIM sec. 4.2, D.2)")


@with_options(DDIMOptions)
@torch.no_grad()
def ddim(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
    eta: float = 0.0,
    spacing: str = "uniform",
) -> tuple[torch.Tensor, int]:
    """DDIM sampler (Song et al. 2021, eq. 12); returns (x_0, network evaluations).

    Notation: tau_1 < ... < tau_S the visited timesteps, a_i = alpha_bar_{tau_i} (the paper's
    alpha_t is our alpha_bar), a_0 = 1; one step from x_i to x_{i-1}:
        x_{i-1} = sqrt(a_{i-1}) x0_hat + sqrt(1 - a_{i-1} - sigma_i^2) eps_hat + sigma_i z   (eq. 12)
        sigma_i = eta sqrt((1 - a_{i-1}) / (1 - a_i)) sqrt(1 - a_i / a_{i-1})              (eq. 16)
    """
    schedule = denoiser.schedule
    taus = spaced_timesteps(schedule.T, steps or schedule.T, spacing)
    alpha_bar = schedule.alpha_bar[taus]
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    sigma = eta * ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).sqrt() * (1.0 - alpha_bar / alpha_bar_prev).sqrt()  # eq. 16

    x = x_T.to(torch.float64)
    S = len(taus)
    for i in reversed(range(S)):
        t = int(taus[i])
        pred = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y)
        a_prev, s = float(alpha_bar_prev[i]), float(sigma[i])
        # Direction pointing to x_t, then the predicted x_0 part (eq. 12).
        x = a_prev**0.5 * pred.x0 + max(1.0 - a_prev - s**2, 0.0) ** 0.5 * pred.eps
        if s > 0:
            x = x + s * randn_like(x, generator)  # random noise sigma_t eps_t (eq. 12)
        check_finite(x, S - i, t, "ddim")
        if callback is not None:
            callback(S - i, S, t, x, pred.x0)
    return x, S


@torch.no_grad()
def ddim_invert(
    denoiser,
    x_0: torch.Tensor,
    steps: int | None = None,
    y: torch.Tensor | None = None,
    spacing: str = "uniform",
    callback: Callback = None,
    refine: int = 0,
) -> tuple[torch.Tensor, int]:
    """Deterministic DDIM run backwards, x_0 -> x_T (Song et al. 2021, sec. 4.3: eq. 12 with
    sigma = 0 as an Euler step of the ODE of eq. 14); returns (x_T, network evaluations).
    Decoding the result with ``ddim(eta=0)`` on the same steps and spacing gives back x_0 up
    to the discretisation error, or exactly (to a fixed-point tolerance) with ``refine`` > 0.

    Decoding goes x_i -> x_{i-1} with eps_hat(x_i, tau_i), in the paper's eq. 13 form
        x_{i-1} / sqrt(a_{i-1}) = x_i / sqrt(a_i) + (sigma_{i-1} - sigma_i) eps_hat(x_i, tau_i),
        sigma_i = sqrt((1 - a_i) / a_i).
    Inversion solves the same equation for x_i; x_i is not known yet, so eps_hat is first
    taken at x_{i-1} (with timestep tau_i), then re-evaluated at the new x_i ``refine``
    times (fixed-point iteration, one network evaluation each).
    """
    schedule = denoiser.schedule
    taus = spaced_timesteps(schedule.T, steps or schedule.T, spacing)
    alpha_bar = schedule.alpha_bar[taus]
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])

    x = x_0.to(torch.float64)
    S, nfe = len(taus), 0
    for i in range(S):
        t = int(taus[i])
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        a_prev, a = float(alpha_bar_prev[i]), float(alpha_bar[i])
        x_guess = x
        for _ in range(1 + refine):
            pred = denoiser(x_guess, t_batch, y)
            nfe += 1
            x0_hat = (x - (1.0 - a_prev) ** 0.5 * pred.eps) / a_prev**0.5  # eq. 12 (sigma = 0) read backwards
            x_guess = a**0.5 * x0_hat + (1.0 - a) ** 0.5 * pred.eps
        x = x_guess
        check_finite(x, i + 1, t, "ddim inversion")
        if callback is not None:
            callback(i + 1, S, t, x, x0_hat)
    return x, nfe
