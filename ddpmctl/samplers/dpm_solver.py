"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 2): a second-order multistep solver of the
diffusion ODE in data prediction, on timesteps uniform in log-SNR."""

from __future__ import annotations

import math

import torch

from ddpmctl.registry import NoOptions, with_options
from ddpmctl.samplers.base import Callback, check_finite, spread_timesteps


def logsnr_timesteps(schedule, steps: int) -> torch.Tensor:
    """`steps` training timesteps evenly spaced in the half-log-SNR lambda_t between the
    model's first and last timestep (Lu et al. 2022, sec. 3.3 and app. D), increasing; each
    lambda is mapped to the nearest of the model's timesteps (``spread_timesteps``)."""
    return spread_timesteps(-0.5 * schedule.log_snr, steps)  # -lambda_t increases with t


@with_options(NoOptions)
@torch.no_grad()
def dpm_solver_pp(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """DPM-Solver++(2M), data prediction (Lu et al. 2022, Alg. 2); returns (x_0, network evaluations).

    Notation (the paper's, for the VP process): alpha_t = sqrt(alpha_bar_t), sigma_t =
    sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t), h_i = lambda_{t_i} - lambda_{t_{i-1}},
    x_theta = x0_hat. The steps go t_0 = tau_S (noise) ... t_{S-1} = tau_1, then to the data
    (lambda = +inf). First step and last step are first order (DPM-Solver++(1) = DDIM):
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i
    with D_i = x_theta(x_{t_{i-1}}) for first order, and for second order, r_i = h_{i-1} / h_i,
        D_i = (1 + 1/(2 r_i)) x_theta(x_{t_{i-1}}) - 1/(2 r_i) x_theta(x_{t_{i-2}})      (Alg. 2)
    """
    schedule = denoiser.schedule
    taus = logsnr_timesteps(schedule, steps or schedule.T).flip(0)  # decreasing: t_0 = noise end
    alpha_bar = schedule.alpha_bar[taus]
    alpha = alpha_bar.sqrt()  # the paper's alpha_t
    sigma = (1.0 - alpha_bar).sqrt()  # the paper's sigma_t
    lam = alpha.log() - sigma.log()  # lambda_t

    x = x_T.to(torch.float64)
    S = len(taus)
    x0_prev, h_prev = None, None  # x_theta(x_{t_{i-2}}) and h_{i-1}
    for i in range(S):
        t = int(taus[i])
        pred = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y)
        if i == S - 1:  # last step, to lambda = +inf: sigma -> 0, alpha -> 1, first order
            x = pred.x0
        else:
            h = float(lam[i + 1] - lam[i])
            if x0_prev is None:  # first step: first order (DPM-Solver++(1))
                D = pred.x0
            else:
                r = h_prev / h
                D = (1.0 + 1.0 / (2.0 * r)) * pred.x0 - (1.0 / (2.0 * r)) * x0_prev  # Alg. 2, line 6
            x = float(sigma[i + 1] / sigma[i]) * x - float(alpha[i + 1]) * math.expm1(-h) * D  # Alg. 2, line 7
            x0_prev, h_prev = pred.x0, h
        check_finite(x, i + 1, t, "dpm-solver++")
        if callback is not None:
            callback(i + 1, S, t, x, pred.x0)
    return x, S
