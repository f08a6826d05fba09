"""The forward process and the training objective (pure torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpmctl.schedules import Schedule


def gather(coef: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """coef[t] broadcast to like's shape (B, 1, 1, ...), in like's dtype and device."""
    out = coef.to(like.device)[t].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (DDPM eq. 4)."""
    a = gather(schedule.alpha_bar, t, x0)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * eps


def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x_0)  (DDPM eqs. 6-7)."""
    mean = gather(schedule.posterior_mean_coef1, t, x_t) * x0 + gather(schedule.posterior_mean_coef2, t, x_t) * x_t
    return mean, gather(schedule.beta_tilde, t, x_t)


def target(prediction: str, schedule: Schedule, x0, eps, t) -> torch.Tensor:
    """What the network is trained to output: eps, x0, or v = sqrt(a) eps - sqrt(1-a) x0
    (Salimans & Ho 2022)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        a = gather(schedule.alpha_bar, t, x0)
        return a.sqrt() * eps - (1.0 - a).sqrt() * x0
    raise ValueError(f"unknown prediction {prediction!r}; known: eps, x0, v")


class DiffusionLoss:
    """L_simple of DDPM Algorithm 1: E_{t, x_0, eps} || target - net(x_t, t) ||^2.

    With ``p_uncond`` > 0, labels are replaced by the null label (index ``num_classes``)
    with that probability, which trains the unconditional model that classifier-free
    guidance needs (Ho & Salimans 2022).
    """

    def __init__(self, schedule: Schedule, prediction: str = "eps", p_uncond: float = 0.0, num_classes: int = 0):
        self.schedule = schedule
        self.prediction = prediction
        self.p_uncond = p_uncond
        self.num_classes = num_classes

    def __call__(self, net, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.T, (B,), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = q_sample(self.schedule, x0, t, eps)
        if y is not None and self.p_uncond > 0:
            drop = torch.rand(B, device=x0.device, generator=generator) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        out = net(x_t, t, y)
        return F.mse_loss(out.float(), target(self.prediction, self.schedule, x0, eps, t).float())
