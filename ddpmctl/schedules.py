"""Noise schedules: discrete-time alpha_bar[t], t = 0 .. T-1, in float64.

Notation (Ho et al. 2020): beta_t is the variance of step t, alpha_t = 1 - beta_t and
alpha_bar_t = prod_{s<=t} alpha_s, so that q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
Index 0 is the first noising step (the paper's t = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from pydantic import Field, model_validator

from ddpmctl.registry import PluginOptions, with_options


@dataclass(frozen=True, eq=False)
class Schedule:
    """Everything that derives from alpha_bar. All tensors are float64, shape (T,)."""

    alpha_bar: torch.Tensor
    name: str = "custom"

    def __post_init__(self):
        a = self.alpha_bar
        if a.dtype != torch.float64 or a.ndim != 1:
            raise ValueError("alpha_bar must be a 1-D float64 tensor")
        if not (bool((a > 0).all()) and bool((a < 1).all()) and bool((a[1:] <= a[:-1]).all())):
            raise ValueError("alpha_bar must lie in (0, 1) and not increase")

    @property
    def T(self) -> int:
        return self.alpha_bar.shape[0]

    @cached_property
    def alpha_bar_prev(self) -> torch.Tensor:
        return torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar[:-1]])

    @cached_property
    def alpha(self) -> torch.Tensor:
        return self.alpha_bar / self.alpha_bar_prev

    @cached_property
    def beta(self) -> torch.Tensor:
        return 1.0 - self.alpha

    @cached_property
    def log_beta(self) -> torch.Tensor:
        return torch.log(self.beta)

    @cached_property
    def beta_tilde(self) -> torch.Tensor:
        """Posterior variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 7)."""
        return (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * self.beta

    @cached_property
    def log_beta_tilde_clipped(self) -> torch.Tensor:
        """log beta-tilde_t with the t = 1 value (which is 0) replaced by that of t = 2, as in
        improved DDPM's code, so that the learned-variance interpolation stays finite."""
        bt = self.beta_tilde
        return torch.log(torch.cat([bt[1:2], bt[1:]])) if self.T > 1 else self.log_beta

    @cached_property
    def posterior_mean_coef1(self) -> torch.Tensor:
        """Coefficient of x_0 in mu-tilde_t (DDPM eq. 7)."""
        return self.alpha_bar_prev.sqrt() * self.beta / (1.0 - self.alpha_bar)

    @cached_property
    def posterior_mean_coef2(self) -> torch.Tensor:
        """Coefficient of x_t in mu-tilde_t (DDPM eq. 7)."""
        return self.alpha.sqrt() * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    @cached_property
    def sigma(self) -> torch.Tensor:
        """EDM noise level: x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps (Karras et al. 2022)."""
        return ((1.0 - self.alpha_bar) / self.alpha_bar).sqrt()

    @cached_property
    def log_snr(self) -> torch.Tensor:
        """lambda_t = log(alpha_bar_t / (1 - alpha_bar_t))."""
        return torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)

    def respace(self, timesteps: torch.Tensor) -> "Schedule":
        """The schedule restricted to a subset of timesteps (Nichol & Dhariwal 2021, sec. 4):
        alpha_bar is kept at the chosen steps and the betas are recomputed from it."""
        return Schedule(self.alpha_bar[timesteps], name=f"{self.name}[{len(timesteps)}]")


def from_betas(beta: torch.Tensor, name: str) -> Schedule:
    return Schedule(torch.cumprod(1.0 - beta.double(), dim=0), name=name)


class LinearOptions(PluginOptions):
    T: int = Field(1000, ge=2, le=100_000, description="number of diffusion steps")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="beta_1")
    beta_end: float = Field(0.02, gt=0, lt=1, description="beta_T")


@with_options(LinearOptions)
def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Linear betas from 1e-4 to 0.02 (Ho et al. 2020, sec. 4), rescaled for other T."""
    scale = 1000 / T  # keeps alpha_bar_T comparable when T != 1000 (as in improved DDPM's code)
    beta = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), T, dtype=torch.float64)
    return from_betas(beta, name="linear")


class CosineOptions(PluginOptions):
    T: int = Field(1000, ge=2, le=100_000, description="number of diffusion steps")
    s: float = Field(0.008, ge=0, lt=1, description="offset that keeps beta_t from being tiny near t = 0")
    max_beta: float = Field(0.999, gt=0, lt=1, description="clip on beta_t near t = T (avoids a singularity)")


@with_options(CosineOptions)
def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Cosine schedule, alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2)
    (Nichol & Dhariwal 2021, eq. 17), with beta_t clipped at max_beta."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    beta = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    return from_betas(beta, name="cosine")


class SigmoidOptions(PluginOptions):
    T: int = Field(1000, ge=2, le=100_000, description="number of diffusion steps")
    start: float = Field(-3.0, description="left end of the sigmoid's input range")
    end: float = Field(3.0, description="right end of the sigmoid's input range")
    tau: float = Field(1.0, gt=0, description="temperature: larger tau is closer to linear in t")
    max_beta: float = Field(0.999, gt=0, lt=1, description="clip on beta_t near t = T (alpha_bar(1) = 0)")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.start < self.end:
            raise ValueError(f"start ({self.start}) must be less than end ({self.end})")
        return self


@with_options(SigmoidOptions)
def sigmoid(T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999) -> Schedule:
    """Sigmoid schedule, alpha_bar(t) = (s(end/tau) - s((t (end - start) + start)/tau)) /
    (s(end/tau) - s(start/tau)), s the logistic function (Chen 2023, Algorithm 1; Jabri et al.
    2022), on t = i/T, with beta_t clipped at max_beta."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alpha_bar = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)  # Chen 2023, Alg. 1
    beta = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    return from_betas(beta, name="sigmoid")
