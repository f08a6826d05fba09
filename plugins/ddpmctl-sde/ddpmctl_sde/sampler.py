"""Euler-Maruyama on the reverse-time VP SDE (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations").

Forward SDE (their eq. 11):     dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw
Reverse SDE (their eq. 6):      dx = [-1/2 beta(t) x - beta(t) grad_x log p_t(x)] dt + sqrt(beta(t)) dw_bar
Score from the denoiser:        grad_x log p_t(x_t) = -eps_hat / sqrt(1 - alpha_bar_t)

Every ddpmctl process is x / a = x_0 + sigma eps (ddpmctl.processes), whose VP form has
alpha_bar = 1 / (1 + sigma^2). On a grid of levels sigma_S > ... > sigma_1 the integral of beta
over one step is beta_i dt = -log(alpha_bar_i / alpha_bar_{i-1}) (exact for the VP SDE), and one
Euler-Maruyama step going backwards in time reads

    x <- x + (1/2 x + score) beta_i dt + sqrt(beta_i dt) z.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import alpha_bar as vp_alpha_bar, check_finite, randn_like, sigma_grid


class EulerMaruyamaOptions(PluginOptions):
    denoise_last: bool = Field(True, description="return x0_hat of the last step (Tweedie denoising) instead of x")


@with_options(EulerMaruyamaOptions)
@torch.no_grad()
def euler_maruyama(denoiser, x_T, steps=None, generator=None, callback=None, y=None, denoise_last=True):
    """Reverse VP SDE, Euler-Maruyama; returns (x_0, number of network evaluations)."""
    process = denoiser.process
    sigmas = sigma_grid(process, steps or process.default_steps, "auto").flip(0)  # increasing
    alpha_bar = vp_alpha_bar(sigmas)
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    beta_dt = torch.log(alpha_bar_prev / alpha_bar)  # integral of beta(t) over each step

    x = x_T.to(torch.float64) * process.prior_std(float(sigmas[-1])) * float(alpha_bar[-1]) ** 0.5  # VP form
    S = len(sigmas)
    for i in reversed(range(S)):
        s = float(sigmas[i])
        pred = denoiser(x / float(alpha_bar[i]) ** 0.5, s, y)
        score = -pred.eps / (1.0 - alpha_bar[i]).sqrt()
        b = float(beta_dt[i])
        drift = (0.5 * x + score) * b  # reverse-time drift times dt
        if i > 0:
            x = x + drift + b**0.5 * randn_like(x, generator)
        else:
            x = pred.x0 if denoise_last else x + drift
        check_finite(x, S - i, s, "euler-maruyama")
        if callback is not None:
            callback(S - i, S, s, x, pred.x0)
    return x, S
