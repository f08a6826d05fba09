"""Ancestral sampling (Ho et al. 2020, Algorithm 2), on all or a strided subset of the
training timesteps (respacing, Nichol & Dhariwal 2021, sec. 4), with a fixed or a learned
variance (Nichol & Dhariwal 2021, eq. 15)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ddpmctl.diffusion import learned_log_variance
from ddpmctl.errors import OptionsError
from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, check_finite, randn_like, spaced_timesteps


class DDPMOptions(PluginOptions):
    variance: Literal["auto", "learned", "beta", "beta_tilde"] = Field(
        "auto",
        description="sigma_t^2: beta_t (upper bound), the posterior variance beta-tilde_t (lower bound), "
        "the model's learned interpolation of the two, or auto (learned when the model has it, else beta_tilde)",
    )
    spacing: Literal["uniform", "quadratic"] = Field("uniform", description="which training timesteps a respaced run visits")


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
    spacing: str = "uniform",
) -> tuple[torch.Tensor, int]:
    """Ancestral DDPM sampler (Ho et al. 2020, Alg. 2), respaced; returns (x_0, network evaluations).

    Notation: tau_1 < ... < tau_S the visited training timesteps; on them alpha_bar_i =
    alpha_bar_{tau_i}, beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}, beta-tilde_i its posterior
    variance; one step is x_{i-1} = mu-tilde_i(x_i, x0_hat) + sigma_i z.
    """
    T = denoiser.schedule.T
    taus = spaced_timesteps(T, steps or T, spacing)  # tau_1 < ... < tau_S
    # Respaced schedule: alpha_bar kept at the chosen steps, betas recomputed (N&D 2021, eq. 19).
    rs = denoiser.schedule.respace(taus)
    coef_x0, coef_xt = rs.posterior_mean_coef1, rs.posterior_mean_coef2  # mu-tilde, DDPM eq. 7
    std_beta, std_beta_tilde = rs.beta.sqrt(), rs.beta_tilde.sqrt()
    log_beta, log_beta_tilde = rs.log_beta, rs.log_beta_tilde_clipped  # ends of the learned interpolation

    x = x_T.to(torch.float64)
    S = len(taus)
    for i in reversed(range(S)):
        t = int(taus[i])
        pred = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y)
        if variance == "learned" and pred.var_interp is None:
            raise OptionsError("variance=learned needs a model trained with learn_sigma = true; use variance=auto, beta or beta_tilde.")
        # Posterior mean mu-tilde(x_t, x0_hat), equivalent to DDPM eq. 11 for eps-prediction.
        mean = float(coef_x0[i]) * pred.x0 + float(coef_xt[i]) * x
        if i > 0:
            z = randn_like(x, generator)
            if variance == "beta":
                std = float(std_beta[i])
            elif variance == "beta_tilde" or pred.var_interp is None:
                std = float(std_beta_tilde[i])
            else:  # learned, on the respaced betas (N&D eq. 15, as improved DDPM respaces it)
                std = torch.exp(0.5 * learned_log_variance(pred.var_interp, float(log_beta[i]), float(log_beta_tilde[i])))
            x = mean + std * z  # Algorithm 2, line 4
        else:
            x = mean  # no noise at the last step
        check_finite(x, S - i, t, "ddpm")
        if callback is not None:
            callback(S - i, S, t, x, pred.x0)
    return x, S
