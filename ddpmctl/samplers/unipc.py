"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", Algorithms 2 and 3, data prediction, B(h) = e^h - 1, "bh2"): a multistep
predictor (UniP) and a corrector (UniC) that reuses the next network evaluation, so a step costs
one evaluation; the corrector raises the order by one for free."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.base import Callback, Spacing, check_finite, sigma_grid, unscaled


class UniPCOptions(PluginOptions):
    order: int = Field(2, ge=1, le=3, description="order of the predictor (UniP-p); the corrector adds one")
    spacing: Spacing = Field("logsnr", description="noise-level grid (samplers/base.py)")
    corrector: bool = Field(True, description="apply UniC after each predictor step (no extra network evaluation)")


def _coefficients(rks: list[float], hh: float, order: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The linear system of UniPC's order conditions (Zhao et al. 2023, eq. 10 and app. C) with
    B(h) = e^h - 1: R[i][k] = r_k^i, b_i = phi_{i+1}(hh) i! / B(h); returns (R, b, phi_1, B(h))."""
    h_phi_1 = math.expm1(hh)  # e^{-h} - 1, hh = -h
    h_phi_k = h_phi_1 / hh - 1.0
    B_h = math.expm1(hh)
    R, b, factorial = [], [], 1
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / B_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), h_phi_1, B_h


@with_options(UniPCOptions)
@torch.no_grad()
def unipc(
    denoiser,
    x_T: torch.Tensor,
    steps: int | None = None,
    generator=None,
    callback: Callback = None,
    y: torch.Tensor | None = None,
    order: int = 2,
    spacing: str = "logsnr",
    corrector: bool = True,
) -> tuple[torch.Tensor, int]:
    """UniPC-bh2 with data prediction; returns (x_0, network evaluations).

    Notation (the paper's, on the scaled state x = x_t / alpha_t): lambda = -log sigma,
    h = lambda_t - lambda_{s_0}, m_k = x0_hat at the k-th previous level, r_k = (lambda_{s_k} -
    lambda_{s_0}) / h, D_k = (m_k - m_0) / r_k. Predictor (Alg. 2):
        x_t = (sigma_t / sigma_{s_0}) x - (e^{-h} - 1) m_0 - B(h) sum_k a_k D_k
    corrector (Alg. 3), once m_t = x0_hat(x_t) is known:
        x_t^c = (sigma_t / sigma_{s_0}) x - (e^{-h} - 1) m_0 - B(h) (sum_k c_k D_k + c_t (m_t - m_0))
    with a, c from the order conditions (``_coefficients``). The order grows over the first steps
    and shrinks over the last ones (lower-order final steps), and the last step goes to sigma = 0.
    """
    process = denoiser.process
    sigmas = sigma_grid(process, steps or process.default_steps, spacing).tolist()  # decreasing
    N = len(sigmas)
    sigmas = sigmas + [0.0]
    x = x_T.to(torch.float64) * process.prior_std(sigmas[0])
    pred = denoiser(x, sigmas[0], y)
    models, lams = [pred.x0], [-math.log(sigmas[0])]  # newest first
    for i in range(N):
        s0, t = sigmas[i], sigmas[i + 1]
        if t == 0.0:  # the last step: to sigma = 0, x_0 is the data prediction itself
            x, x0_hat = models[0], models[0]
        else:
            p = min(order, i + 1, N - i)  # warm-up, and lower order at the end
            h = -math.log(t) - lams[0]
            rks = [(lams[k] - lams[0]) / h for k in range(1, p)] + [1.0]
            D1s = [(models[k] - models[0]) / rks[k - 1] for k in range(1, p)]
            R, b, h_phi_1, B_h = _coefficients(rks, -h, p)
            base = (t / s0) * x - h_phi_1 * models[0]
            # Predictor UniP-p (Alg. 2).
            x_pred = base
            if D1s:
                rhos_p = torch.tensor([0.5]) if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
                x_pred = base - B_h * sum(float(r) * d for r, d in zip(rhos_p, D1s))
            pred = denoiser(x_pred, t, y)
            x0_hat = pred.x0
            # Corrector UniC-p (Alg. 3), with the evaluation the next step needs anyway.
            if corrector:
                rhos_c = torch.tensor([0.5]) if p == 1 else torch.linalg.solve(R, b)
                res = sum(float(r) * d for r, d in zip(rhos_c[:-1], D1s)) + float(rhos_c[-1]) * (x0_hat - models[0])
                x = base - B_h * res
            else:
                x = x_pred
            models.insert(0, x0_hat)
            lams.insert(0, -math.log(t))
            del models[order:], lams[order:]
        check_finite(x, i + 1, s0, "unipc")
        if callback is not None:
            callback(i + 1, N, s0, unscaled(process, x, t), x0_hat)
    return x, N
