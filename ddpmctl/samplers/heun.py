"""The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2): Heun's second-order method on the probability-flow ODE
dx/dsigma = (x - D(x; sigma)) / sigma, with optional stochastic churn, driven through the
denoiser of a discrete-time (VP) model.

A VP model's x_t = sqrt(alpha_bar_t) (x_0 + sigma_t eps) with sigma_t = sqrt((1 - alpha_bar_t)
/ alpha_bar_t) (``Schedule.sigma``), so the EDM state is x = x_t / sqrt(alpha_bar_t) and
D(x; sigma_t) = x0_hat(sqrt(alpha_bar_t) x, t). The model knows only its T noise levels, so
every sigma the sampler visits (the Karras discretisation, the churned sigma-hat) is moved to
the nearest of them in log sigma; the ODE is then integrated exactly on levels the model was
trained on, and sigma_max / sigma_min are clamped to the model's range.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, check_finite, fractional_timestep, randn_like, spread_timesteps


class HeunOptions(PluginOptions):
    sigma_min: float = Field(0.002, gt=0, description="lowest noise level (EDM's value; raised to the model's sigma at t = 1 if below)")
    sigma_max: float = Field(80.0, gt=0, description="highest noise level (EDM's value; lowered to the model's sigma at t = T if above)")
    rho: float = Field(7.0, gt=0, description="Karras et al. eq. 5: larger rho spends more steps near sigma_min")
    S_churn: float = Field(0.0, ge=0, description="stochasticity: total noise added back (0 = deterministic ODE)")
    S_min: float = Field(0.0, ge=0, description="churn only where sigma >= S_min")
    S_max: float | None = Field(None, ge=0, description="churn only where sigma <= S_max (default: no upper limit)")
    S_noise: float = Field(1.0, ge=0, description="scale of the noise added back (slightly above 1 offsets over-denoising)")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be less than sigma_max ({self.sigma_max})")
        return self


def nearest_level(sigma: float, log_sigma: torch.Tensor) -> int:
    """The training timestep whose noise level is nearest to ``sigma`` in log sigma (0 .. T-1)."""
    return int(fractional_timestep(torch.tensor([sigma], dtype=torch.float64).log(), log_sigma).round())


def karras_timesteps(schedule, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """`steps` training timesteps at the Karras discretisation
        sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho   (Karras et al. eq. 5),
    i.e. evenly spaced in sigma^(1/rho), each moved to the nearest of the model's levels
    (``spread_timesteps``); sigma_min and sigma_max are first clamped to the model's range
    and moved to their nearest levels (in log sigma). Increasing, all distinct; fewer than
    `steps` when fewer levels lie between sigma_min and sigma_max."""
    log_sigma = schedule.sigma.log()  # increasing in t
    lo, hi = nearest_level(sigma_min, log_sigma), nearest_level(sigma_max, log_sigma)
    steps = min(steps, hi - lo + 1)  # more steps than levels in the range: every level
    return spread_timesteps(schedule.sigma ** (1.0 / rho), steps, lo, hi)  # eq. 5


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
) -> tuple[torch.Tensor, int]:
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2); returns (x_0, network evaluations).

    Notation: t_0 > ... > t_{N-1} the noise levels sigma (Karras et al. write t for sigma),
    t_N = 0; x_i the EDM state at t_i; D the denoiser; gamma_i the churn. N levels cost
    2N - 1 evaluations (no correction on the last step, to sigma = 0).
    """
    schedule = denoiser.schedule
    taus = karras_timesteps(schedule, steps or schedule.T, sigma_min, sigma_max, rho).flip(0)  # decreasing
    sigma_all = schedule.sigma
    log_sigma_all = sigma_all.log()
    N = len(taus)
    sigmas = torch.cat([sigma_all[taus], sigma_all.new_zeros(1)])  # t_0 > ... > t_{N-1} > t_N = 0

    def D(x: torch.Tensor, t: int):
        """x0_hat at the EDM state x and the model's noise level sigma_t: x_t = x / sqrt(1 + sigma_t^2)."""
        x_vp = x / (1.0 + float(sigma_all[t]) ** 2) ** 0.5
        return denoiser(x_vp, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y).x0

    # The VP model's x_T, at the highest level used, as an EDM state: x / sqrt(1 + sigma^2) = x_T.
    x_next = x_T.to(torch.float64) * (1.0 + float(sigmas[0]) ** 2) ** 0.5
    for i in range(N):
        x_cur, s_cur, s_next = x_next, float(sigmas[i]), float(sigmas[i + 1])  # x_i, t_i, t_{i+1}

        # Increase noise temporarily (Alg. 2, lines 4-6); sigma-hat moved onto a model level.
        in_range = S_min <= s_cur and (S_max is None or s_cur <= S_max)
        gamma = min(S_churn / N, 2**0.5 - 1) if in_range else 0.0
        tau_hat = int(taus[i])
        if gamma > 0:
            tau_hat = nearest_level(s_cur * (1 + gamma), log_sigma_all)
        s_hat = float(sigma_all[tau_hat])
        x_hat = x_cur
        if s_hat > s_cur:
            x_hat = x_cur + (s_hat**2 - s_cur**2) ** 0.5 * S_noise * randn_like(x_cur, generator)

        # Euler step (Alg. 2, lines 7-8).
        x0_hat = D(x_hat, tau_hat)
        d_cur = (x_hat - x0_hat) / s_hat
        x_next = x_hat + (s_next - s_hat) * d_cur

        # Apply 2nd order correction (Alg. 2, lines 9-11).
        if i < N - 1:
            d_prime = (x_next - D(x_next, int(taus[i + 1]))) / s_next
            x_next = x_hat + (s_next - s_hat) * (0.5 * d_cur + 0.5 * d_prime)

        check_finite(x_next, i + 1, tau_hat, "heun")
        if callback is not None:  # x_t of the VP model at the next level
            callback(i + 1, N, tau_hat, x_next / (1.0 + s_next**2) ** 0.5, x0_hat)
    return x_next, 2 * N - 1
