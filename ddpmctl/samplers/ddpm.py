"""Ancestral sampling (Ho et al. 2020, Algorithm 2) on a grid of noise levels: all of a DDPM
model's levels or a subset of them (respacing, Nichol & Dhariwal 2021, sec. 4), with a fixed or
a learned variance (Nichol & Dhariwal 2021, eq. 15). The posterior q(x_{t'} | x_t, x_0) depends
only on the two noise levels, so the same chain runs on every process (processes.py)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ddpmctl.diffusion import learned_log_variance
from ddpmctl.errors import OptionsError
from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, Spacing, alpha_bar, check_finite, randn_like, sigma_grid
from ddpmctl.schedules import Schedule


class DDPMOptions(PluginOptions):
    variance: Literal["auto", "learned", "beta", "beta_tilde"] = Field(
        "auto",
        description="sigma_t^2: beta_t (upper bound), the posterior variance beta-tilde_t (lower bound), "
        "the model's learned interpolation of the two, or auto (learned when the model has it, else beta_tilde)",
    )
    spacing: Spacing = Field("auto", description="noise-level grid (samplers/base.py): which levels a respaced run visits; auto: the process's own (uniform for ddpm and flow, karras for edm)")


@with_options(DDPMOptions)
@torch.no_grad()
def ddpm(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
    variance: str = "auto",
    spacing: str = "auto",
) -> tuple[torch.Tensor, int]:
    """Ancestral DDPM sampler (Ho et al. 2020, Alg. 2), respaced; returns (x_0, network evaluations).

    Notation: sigma_1 < ... < sigma_S the visited levels; in VP form alpha_bar_i = 1 / (1 +
    sigma_i^2), beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}, beta-tilde_i its posterior variance
    (the respaced schedule, N&D 2021, eq. 19); one step is x_{i-1} = mu-tilde_i(x_i, x0_hat) + sigma_i z,
    taken on x_t = sqrt(alpha_bar) x (x the scaled state).
    """
    process = denoiser.process
    sigmas = sigma_grid(process, steps or process.default_steps, spacing).flip(0)  # increasing: sigma_1 .. sigma_S
    rs = Schedule(alpha_bar(sigmas))  # the respaced schedule on the visited levels
    coef_x0, coef_xt = rs.posterior_mean_coef1, rs.posterior_mean_coef2  # mu-tilde, DDPM eq. 7
    std_beta, std_beta_tilde = rs.beta.sqrt(), rs.beta_tilde.sqrt()
    log_beta, log_beta_tilde = rs.log_beta, rs.log_beta_tilde_clipped  # ends of the learned interpolation

    S = len(sigmas)
    x_t = x_T.to(torch.float64) * process.prior_std(float(sigmas[-1])) * float(rs.alpha_bar[-1]) ** 0.5  # VP form
    for i in reversed(range(S)):
        s = float(sigmas[i])
        pred = denoiser(x_t / float(rs.alpha_bar[i]) ** 0.5, s, y)
        if variance == "learned" and pred.var_interp is None:
            raise OptionsError("variance=learned needs a model trained with learn_sigma = true; use variance=auto, beta or beta_tilde.")
        # Posterior mean mu-tilde(x_t, x0_hat), equivalent to DDPM eq. 11 for eps-prediction.
        mean = float(coef_x0[i]) * pred.x0 + float(coef_xt[i]) * x_t
        if i > 0:
            z = randn_like(x_t, generator)
            if variance == "beta":
                std = float(std_beta[i])
            elif variance == "beta_tilde" or pred.var_interp is None:
                std = float(std_beta_tilde[i])
            else:  # learned, on the respaced betas (N&D eq. 15, as improved DDPM respaces it)
                std = torch.exp(0.5 * learned_log_variance(pred.var_interp, float(log_beta[i]), float(log_beta_tilde[i])))
            x_t = mean + std * z  # Algorithm 2, line 4
        else:
            x_t = mean  # no noise at the last step
        check_finite(x_t, S - i, s, "ddpm")
        if callback is not None:
            scale = float(process.scale(sigmas[i - 1])) / float(rs.alpha_bar[i - 1]) ** 0.5 if i > 0 else 1.0
            callback(S - i, S, s, x_t * scale, pred.x0)
    return x_t, S
