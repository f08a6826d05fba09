"""The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2): Heun's second-order method on the probability-flow ODE
dx/dsigma = (x - D(x; sigma)) / sigma, with optional stochastic churn.

Every process is written as x / a = x_0 + sigma eps (processes.py), so the EDM state is the
scaled state and D(x; sigma) the denoiser's x0_hat. A discrete (DDPM) model knows only its T
noise levels, so every sigma the sampler visits (the Karras discretisation, the churned
sigma-hat) is moved to the nearest of them in log sigma (``samplers.base.snap``); the ODE is
then integrated on levels the model was trained on. sigma_min / sigma_max are clamped to the
model's range.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, Spacing, check_finite, randn_like, sigma_grid, snap, unscaled


class HeunOptions(PluginOptions):
    sigma_min: float = Field(0.002, gt=0, description="lowest noise level (EDM's value; raised to the model's sigma at t = 1 if below)")
    sigma_max: float = Field(80.0, gt=0, description="highest noise level (EDM's value; lowered to the model's sigma at t = T if above)")
    rho: float = Field(7.0, gt=0, description="Karras et al. eq. 5: larger rho spends more steps near sigma_min")
    S_churn: float = Field(0.0, ge=0, description="stochasticity: total noise added back (0 = deterministic ODE)")
    S_min: float = Field(0.0, ge=0, description="churn only where sigma >= S_min")
    S_max: float | None = Field(None, ge=0, description="churn only where sigma <= S_max (default: no upper limit)")
    S_noise: float = Field(1.0, ge=0, description="scale of the noise added back (slightly above 1 offsets over-denoising)")
    spacing: Spacing = Field("karras", description="noise-level grid (samplers/base.py; EDM eq. 5: karras)")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be less than sigma_max ({self.sigma_max})")
        return self


@with_options(HeunOptions)
@torch.no_grad()
def heun(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float | None = None,
    S_noise: float = 1.0,
    spacing: str = "karras",
) -> tuple[torch.Tensor, int]:
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2); returns (x_0, network evaluations).

    Notation: t_0 > ... > t_{N-1} the noise levels sigma (Karras et al. write t for sigma),
    t_N = 0; x_i the EDM state at t_i; D the denoiser; gamma_i the churn. N levels cost
    2N - 1 evaluations (no correction on the last step, to sigma = 0).
    """
    process = denoiser.process
    levels = sigma_grid(process, steps or process.default_steps, spacing, rho, sigma_min, sigma_max).tolist()
    N = len(levels)
    sigmas = levels + [0.0]  # t_0 > ... > t_{N-1} > t_N = 0

    x_next = x_T.to(torch.float64) * process.prior_std(sigmas[0])
    for i in range(N):
        x_cur, s_cur, s_next = x_next, sigmas[i], sigmas[i + 1]  # x_i, t_i, t_{i+1}

        # Increase noise temporarily (Alg. 2, lines 4-6); sigma-hat moved onto a level the model knows.
        in_range = S_min <= s_cur and (S_max is None or s_cur <= S_max)
        gamma = min(S_churn / N, 2**0.5 - 1) if in_range else 0.0
        s_hat = snap(process, s_cur * (1 + gamma)) if gamma > 0 else s_cur
        x_hat = x_cur
        if s_hat > s_cur:
            x_hat = x_cur + (s_hat**2 - s_cur**2) ** 0.5 * S_noise * randn_like(x_cur, generator)

        # Euler step (Alg. 2, lines 7-8).
        x0_hat = denoiser(x_hat, s_hat, y).x0
        d_cur = (x_hat - x0_hat) / s_hat
        x_next = x_hat + (s_next - s_hat) * d_cur

        # Apply 2nd order correction (Alg. 2, lines 9-11).
        if i < N - 1:
            d_prime = (x_next - denoiser(x_next, s_next, y).x0) / s_next
            x_next = x_hat + (s_next - s_hat) * (0.5 * d_cur + 0.5 * d_prime)

        check_finite(x_next, i + 1, s_hat, "heun")
        if callback is not None:  # the process's own state at the next level
            callback(i + 1, N, s_hat, unscaled(process, x_next, s_next), x0_hat)
    return x_next, 2 * N - 1
