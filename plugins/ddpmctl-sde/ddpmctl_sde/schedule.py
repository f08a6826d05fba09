"""Quadratic betas: beta_t = (linspace(sqrt(beta_1), sqrt(beta_T), T))^2, the "quad" schedule
of the original DDPM code base (Ho et al. 2020, diffusion_utils_2.get_beta_schedule)."""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.schedules import Schedule, from_betas


class QuadraticOptions(PluginOptions):
    T: int = Field(1000, ge=2, le=100_000, description="number of diffusion steps")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="beta_1")
    beta_end: float = Field(0.02, gt=0, lt=1, description="beta_T")


@with_options(QuadraticOptions)
def quadratic(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Betas quadratic in t, from beta_start to beta_end."""
    beta = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return from_betas(beta, name="quadratic")
