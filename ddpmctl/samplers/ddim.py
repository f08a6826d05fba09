"""Denoising diffusion implicit models (Song, Meng & Ermon 2021): the generalised reverse
process of eq. 12 on a grid of noise levels, and its deterministic inversion (eta = 0) from
data to noise. Written on EDM's scaled state x = x_t / a (processes.py), so it runs on every
process; on a DDPM model's own levels it is the paper's sampler."""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, Spacing, alpha_bar, check_finite, randn_like, sigma_grid, unscaled


class DDIMOptions(PluginOptions):
    eta: float = Field(0.0, ge=0, le=1, description="0: deterministic DDIM; 1: the ancestral (DDPM, beta-tilde) process")
    spacing: Spacing = Field("auto", description="noise-level grid (samplers/base.py; DDIM sec. 4.2, D.2: uniform or quadratic); auto: the process's own (uniform for ddpm and flow, karras for edm)")


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
    spacing: str = "auto",
) -> tuple[torch.Tensor, int]:
    """DDIM sampler (Song et al. 2021, eq. 12); returns (x_0, network evaluations).

    Notation: sigma_1 > ... > sigma_S the visited levels, a_i = alpha_bar = 1 / (1 + sigma_i^2)
    (the paper's alpha_t is our alpha_bar), a_{S+1} = 1 at sigma = 0; one step from x_i to
    x_{i+1}, in VP form x_t = sqrt(a) x (x the scaled state):
        x_{t'} = sqrt(a') x0_hat + sqrt(1 - a' - c_i^2) eps_hat + c_i z         (eq. 12)
        c_i = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')                    (eq. 16)
    With eta = 0 it is x' = x0_hat + sigma' eps_hat: the Euler step of the probability-flow ODE
    dx/dsigma = eps_hat (Karras et al. 2022, sec. 3), exact for a straight path (flow matching).
    """
    process = denoiser.process
    sigmas = sigma_grid(process, steps or process.default_steps, spacing).tolist()
    x = x_T.to(torch.float64) * process.prior_std(sigmas[0])
    S = len(sigmas)
    for i, s in enumerate(sigmas):
        s_next = sigmas[i + 1] if i + 1 < S else 0.0
        pred = denoiser(x, s, y)
        a, a_next = alpha_bar(s), alpha_bar(s_next)
        c = eta * ((1.0 - a_next) / (1.0 - a)) ** 0.5 * (1.0 - a / a_next) ** 0.5  # eq. 16
        # Direction pointing to x_t, then the predicted x_0 part (eq. 12), in VP form.
        x_t = a_next**0.5 * pred.x0 + max(1.0 - a_next - c**2, 0.0) ** 0.5 * pred.eps
        if c > 0:
            x_t = x_t + c * randn_like(x, generator)  # random noise sigma_t eps_t (eq. 12)
        x = x_t / a_next**0.5
        check_finite(x, i + 1, s, "ddim")
        if callback is not None:
            callback(i + 1, S, s, unscaled(process, x, s_next), pred.x0)
    return x, S


@torch.no_grad()
def ddim_invert(
    denoiser,
    x_0: torch.Tensor,
    steps: int | None = None,
    y: torch.Tensor | None = None,
    spacing: str = "auto",
    callback: Callback = None,
    refine: int = 0,
) -> tuple[torch.Tensor, int]:
    """Deterministic DDIM run backwards, x_0 -> x_T (Song et al. 2021, sec. 4.3: eq. 12 with
    sigma = 0 as an Euler step of the ODE of eq. 14); returns (x_T as the VP model's unit-variance
    noise, network evaluations), which ``ddim(eta=0)`` on the same steps and spacing decodes to
    x_0 up to the discretisation error, or exactly (to a fixed-point tolerance) with ``refine`` > 0.

    Decoding goes x_i -> x_{i-1} with eps_hat(x_i, sigma_i), in the paper's eq. 13 form
        x_{i-1} = x_i + (sigma_{i-1} - sigma_i) eps_hat(x_i, sigma_i)      (x the scaled state).
    Inversion solves the same equation for x_i; x_i is not known yet, so eps_hat is first
    taken at x_{i-1} with level sigma_i (the paper's x_{t-1} read at timestep t in VP form: here
    x_{i-1} sqrt((1 + sigma_i^2) / (1 + sigma_{i-1}^2))), then re-evaluated at the new x_i
    ``refine`` times (fixed-point iteration, one network evaluation each).
    """
    process = denoiser.process
    sigmas = sigma_grid(process, steps or process.default_steps, spacing).flip(0).tolist()  # increasing
    x = x_0.to(torch.float64)
    S, nfe, s_prev = len(sigmas), 0, 0.0
    for i, s in enumerate(sigmas):
        x_guess = x * ((1.0 + s**2) / (1.0 + s_prev**2)) ** 0.5  # x_{i-1} at level i, as DDIM's VP form reads it
        for _ in range(1 + refine):
            pred = denoiser(x_guess, s, y)
            nfe += 1
            x_guess = x + (s - s_prev) * pred.eps  # eq. 13 read backwards
        x0_hat = x - s_prev * pred.eps
        x, s_prev = x_guess, s
        check_finite(x, i + 1, s, "ddim inversion")
        if callback is not None:
            callback(i + 1, S, s, unscaled(process, x, s), x0_hat)
    return x / process.prior_std(sigmas[-1]), nfe
