"""Euler-Maruyama on the reverse-time VP SDE (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations").

Forward SDE (their eq. 11):     dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw
Reverse SDE (their eq. 6):      dx = [-1/2 beta(t) x - beta(t) grad_x log p_t(x)] dt + sqrt(beta(t)) dw_bar
Score of a discrete model:      grad_x log p_t(x_t) = -eps_hat / sqrt(1 - alpha_bar_t)

On a grid of training timesteps tau_S > ... > tau_1 the integral of beta over one step is
beta_i dt = -log(alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}) (exact for the VP SDE), and one
Euler-Maruyama step going backwards in time reads

    x <- x + (1/2 x + score) beta_i dt + sqrt(beta_i dt) z.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import check_finite, randn_like, uniform_timesteps


class EulerMaruyamaOptions(PluginOptions):
    denoise_last: bool = Field(True, description="return x0_hat of the last step (Tweedie denoising) instead of x")


@with_options(EulerMaruyamaOptions)
@torch.no_grad()
def euler_maruyama(denoiser, x_T, steps=None, generator=None, callback=None, y=None, denoise_last=True):
    """Reverse VP SDE, Euler-Maruyama; returns (x_0, number of network evaluations)."""
    schedule = denoiser.schedule
    taus = uniform_timesteps(schedule.T, steps or schedule.T)
    alpha_bar = schedule.alpha_bar[taus]
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    beta_dt = torch.log(alpha_bar_prev / alpha_bar)  # integral of beta(t) over each step

    x = x_T.to(torch.float64)
    S = len(taus)
    for i in reversed(range(S)):
        t = int(taus[i])
        pred = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y)
        score = -pred.eps / (1.0 - alpha_bar[i]).sqrt()
        b = float(beta_dt[i])
        drift = (0.5 * x + score) * b  # reverse-time drift times dt
        if i > 0:
            x = x + drift + b**0.5 * randn_like(x, generator)
        else:
            x = pred.x0 if denoise_last else x + drift
        check_finite(x, S - i, t, "euler-maruyama")
        if callback is not None:
            callback(S - i, S, t, x, pred.x0)
    return x, S
