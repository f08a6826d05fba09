"""Ancestral sampling (Ho et al. 2020, Algorithm 2), on all or a strided subset of the
training timesteps (respacing, Nichol & Dhariwal 2021, sec. 4)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, check_finite, randn_like, uniform_timesteps


class DDPMOptions(PluginOptions):
    variance: Literal["beta", "beta_tilde"] = Field(
        "beta_tilde",
        description="sigma_t^2 = beta_t (upper bound) or the posterior variance beta-tilde_t (lower bound)",
    )


@with_options(DDPMOptions)
@torch.no_grad()
def ddpm(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
    variance: str = "beta_tilde",
) -> tuple[torch.Tensor, int]:
    """Ancestral DDPM sampler; returns (x_0, number of network evaluations)."""
    schedule = denoiser.schedule
    T = schedule.T
    taus = uniform_timesteps(T, steps or T)  # increasing training timesteps tau_1 < ... < tau_S
    # Respaced schedule: alpha_bar kept at the chosen steps, betas recomputed (N&D 2021, eq. 19).
    alpha_bar = schedule.alpha_bar[taus]
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    beta = 1.0 - alpha_bar / alpha_bar_prev
    beta_tilde = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * beta  # DDPM eq. 7
    coef_x0 = alpha_bar_prev.sqrt() * beta / (1.0 - alpha_bar)  # mu-tilde, DDPM eq. 7
    coef_xt = (1.0 - beta).sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    var = beta if variance == "beta" else beta_tilde

    x = x_T.to(torch.float64)
    S = len(taus)
    for i in reversed(range(S)):
        t = int(taus[i])
        pred = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y)
        # Posterior mean mu-tilde(x_t, x0_hat), equivalent to DDPM eq. 11 for eps-prediction.
        mean = float(coef_x0[i]) * pred.x0 + float(coef_xt[i]) * x
        if i > 0:
            z = randn_like(x, generator)
            x = mean + float(var[i]) ** 0.5 * z  # Algorithm 2, line 4
        else:
            x = mean  # no noise at the last step
        check_finite(x, S - i, t, "ddpm")
        if callback is not None:
            callback(S - i, S, t, x, pred.x0)
    return x, S
