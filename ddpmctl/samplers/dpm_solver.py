"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 2): a second-order multistep solver of the
diffusion ODE in data prediction, by default on levels uniform in log-SNR."""

from __future__ import annotations

import math
import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, Spacing, check_finite, sigma_grid, unscaled


class DPMSolverOptions(PluginOptions):
    spacing: Spacing = Field("logsnr", description="noise-level grid (samplers/base.py; Lu et al. 2022, sec. 3.3: logsnr)")


@with_options(DPMSolverOptions)
@torch.no_grad()
def dpm_solver_pp(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
    spacing: str = "logsnr",
) -> tuple[torch.Tensor, int]:
    """DPM-Solver++(2M), data prediction (Lu et al. 2022, Alg. 2); returns (x_0, network evaluations).

    Notation (the paper's, for the VP form of any process): alpha_t = 1 / sqrt(1 + sigma_t^2),
    sigma_t^VP = sigma_t alpha_t, lambda_t = log(alpha_t / sigma_t^VP) = -log sigma_t,
    h_i = lambda_{t_i} - lambda_{t_{i-1}}, x_theta = x0_hat. On the scaled state x = x_t / alpha_t
    the update of Alg. 2 reads (first and last steps first order, DPM-Solver++(1) = DDIM):
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - (e^{-h_i} - 1) D_i
    with D_i = x_theta(x_{t_{i-1}}) for first order, and for second order, r_i = h_{i-1} / h_i,
        D_i = (1 + 1/(2 r_i)) x_theta(x_{t_{i-1}}) - 1/(2 r_i) x_theta(x_{t_{i-2}})      (Alg. 2)
    """
    process = denoiser.process
    sigmas = sigma_grid(process, steps or process.default_steps, spacing).tolist()  # decreasing
    lam = [-math.log(s) for s in sigmas]  # lambda_t
    x = x_T.to(torch.float64) * process.prior_std(sigmas[0])
    S = len(sigmas)
    x0_prev, h_prev = None, None  # x_theta(x_{t_{i-2}}) and h_{i-1}
    for i, s in enumerate(sigmas):
        pred = denoiser(x, s, y)
        if i == S - 1:  # last step, to lambda = +inf: sigma -> 0, first order
            x = pred.x0
        else:
            h = lam[i + 1] - lam[i]
            if x0_prev is None:  # first step: first order (DPM-Solver++(1))
                D = pred.x0
            else:
                r = h_prev / h
                D = (1.0 + 1.0 / (2.0 * r)) * pred.x0 - (1.0 / (2.0 * r)) * x0_prev  # Alg. 2, line 6
            x = (sigmas[i + 1] / s) * x - math.expm1(-h) * D  # Alg. 2, line 7
            x0_prev, h_prev = pred.x0, h
        check_finite(x, i + 1, s, "dpm-solver++")
        if callback is not None:
            s_next = sigmas[i + 1] if i + 1 < S else 0.0
            callback(i + 1, S, s, unscaled(process, x, s_next), pred.x0)
    return x, S
