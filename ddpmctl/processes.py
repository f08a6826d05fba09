"""Diffusion processes on one continuous noise level: DDPM (discrete VP), EDM (VE) and flow matching.

Every process noises data as x = a x_0 + a sigma eps: a scale a and a noise level sigma, EDM's
sigma (Karras et al. 2022, sec. 2 and table 1), so that x / a = x_0 + sigma eps. Samplers work
on that scaled state x / a and on sigma alone (EDM's and k-diffusion's design), so every sampler
runs on every process; a process says how its network reads (x, sigma) and what it outputs.

    process   native form                                      a(sigma)              sigma range
    ddpm      x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps     1 / sqrt(1 + sigma^2)  its T levels sigma_t = sqrt((1 - abar_t) / abar_t)
    edm       x = x_0 + sigma eps                              1                     [sigma_min, sigma_max]
    flow      x_t = (1 - t) x_0 + t eps                        1 - t = 1 / (1 + sigma) t = sigma / (1 + sigma) in [t_min, t_max]

A process is a plugin (entry-point group ``ddpmctl.processes``), called as
``obj(**options, schedule=Schedule, prediction=str)``; the DDPM family reads the schedule and the
prediction target, the others ignore them. It provides:

- ``default_spacing``, the grid of samplers left at ``spacing=auto``;
- ``levels`` (T,) increasing sigmas a discrete model was trained on, or None for a continuum
  from ``sigma_min`` to ``sigma_max``; ``time(sigma)`` and ``sigma_at(time)``, its native time
  (the grid spacings "uniform" and "quadratic" are even in it);
- ``scale(sigma)`` = a; ``prior_std(sigma)``, the spread of x / a at the highest level;
- ``network_input(x, sigma)`` -> (network input, c_noise) and ``x0_from_output(out, x, sigma)``:
  the preconditioning (EDM table 1) or parameterisation (eps, x0, v; velocity) of its network;
- ``loss(...)``, its training objective (draws of sigma and the weighting).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from ddpmctl.diffusion import DiffusionLoss, HybridLoss, eps_x0_from_output
from ddpmctl.registry import PluginOptions
from ddpmctl.schedules import Schedule

C_NOISE_SCALE = 1000.0  # the networks' sinusoidal embedding is sized for DDPM's timesteps 0 .. 999


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example (B,) tensor as (B, 1, ...) in like's dtype and device."""
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def drop_labels(y: Optional[torch.Tensor], p_uncond: float, num_classes: int, generator: torch.Generator) -> Optional[torch.Tensor]:
    """Classifier-free guidance training (Ho & Salimans 2022): each label becomes the null label
    (index ``num_classes``) with probability ``p_uncond``."""
    if y is None or p_uncond <= 0:
        return y
    drop = torch.rand(y.shape[0], device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, num_classes), y)


class Process:
    """The contract every process follows (see the module docstring)."""

    name = "process"
    levels: Optional[torch.Tensor] = None  # float64 (T,) increasing, for a discrete model
    default_spacing = "uniform"  # the grid of samplers left at spacing=auto (samplers/base.py)
    sigma_min: float
    sigma_max: float

    @property
    def max_steps(self) -> int:
        """The most sampling steps a grid can have: the T levels of a discrete model."""
        return len(self.levels) if self.levels is not None else 100_000

    @property
    def default_steps(self) -> int:
        return len(self.levels) if self.levels is not None else 1000

    def scale(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def time(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma_at(self, time: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prior_std(self, sigma: float) -> float:
        """Standard deviation of x_T / a at the highest level (the noise a sampler starts from)."""
        return sigma

    def network_input(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def x0_from_output(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, p_uncond: float = 0.0, num_classes: int = 0, **training):
        raise NotImplementedError

    @classmethod
    def data_defaults(cls, x: torch.Tensor) -> dict:
        """Options this process takes from the training data when they are not given (resolved
        once and saved with the run's config)."""
        return {}


# ---------------------------------------------------------------------------------------------
# DDPM: a discrete variance-preserving process (Ho et al. 2020), the schedule's T levels


class DDPMOptions(PluginOptions):
    pass


class DDPM(Process):
    """A discrete VP model: the schedule's T levels, sigma_t = sqrt((1 - abar_t) / abar_t), the
    network fed x_t = x / sqrt(1 + sigma^2) and its timestep t (fractional between levels, exact
    on them), predicting eps, x0 or v."""

    Options = DDPMOptions
    name = "ddpm"

    def __init__(self, schedule: Schedule, prediction: str = "eps", **_):
        self.schedule, self.prediction = schedule, prediction
        self.levels = schedule.sigma  # increasing in t
        self.log_levels = self.levels.log()
        self.sigma_min, self.sigma_max = float(self.levels[0]), float(self.levels[-1])

    def scale(self, sigma):
        return 1.0 / (1.0 + sigma**2).sqrt()

    def time(self, sigma):
        """The (fractional) training timestep of sigma: linear interpolation in log sigma between levels."""
        T = len(self.levels)
        value = sigma.double().log().to(self.log_levels.device)
        hi = torch.searchsorted(self.log_levels, value).clamp(1, T - 1)
        lo = hi - 1
        w = (value - self.log_levels[lo]) / (self.log_levels[hi] - self.log_levels[lo])
        t = (lo.double() + w).clamp(0, T - 1)
        return torch.where((t - t.round()).abs() < 1e-6, t.round(), t)  # exactly the level's t on a level

    def sigma_at(self, time):
        T = len(self.levels)
        time = time.double().clamp(0, T - 1)
        lo = time.floor().long().clamp(max=T - 2)
        w = time - lo
        return (self.log_levels[lo] * (1 - w) + self.log_levels[lo + 1] * w).exp()

    def prior_std(self, sigma: float) -> float:
        return math.sqrt(1.0 + sigma**2)  # x_T ~ N(0, I) in VP form, divided by a

    def network_input(self, x, sigma):
        return x * _col(self.scale(sigma), x), self.time(sigma).to(x.device, torch.float32)

    def x0_from_output(self, out, x, sigma):
        a = _col(self.scale(sigma), x)
        _, x0 = eps_x0_from_output(self.prediction, out, x * a, a**2)
        return x0

    def loss(self, p_uncond=0.0, num_classes=0, learn_sigma=False, vlb_weight=0.001, decoder="gaussian", snr_gamma=None, **_):
        """L_simple (or min-SNR-gamma weighted), plus L_vlb with a learned variance (the hybrid loss)."""
        if learn_sigma:
            return HybridLoss(self.schedule, self.prediction, p_uncond, num_classes, vlb_weight, decoder, snr_gamma=snr_gamma)
        return DiffusionLoss(self.schedule, self.prediction, p_uncond, num_classes, snr_gamma=snr_gamma)


# ---------------------------------------------------------------------------------------------
# EDM (Karras et al. 2022): variance exploding, preconditioned, log-normal training levels


class EDMOptions(PluginOptions):
    sigma_data: float = Field(0.5, gt=0, description="standard deviation of the data (default: measured on the training data when training; EDM uses 0.5 for images in [-1, 1])")
    sigma_min: float = Field(0.002, gt=0, description="lowest noise level sampled")
    sigma_max: float = Field(80.0, gt=0, description="highest noise level sampled")
    P_mean: float = Field(-1.2, description="mean of ln(sigma) during training (EDM table 1)")
    P_std: float = Field(1.2, gt=0, description="standard deviation of ln(sigma) during training (EDM table 1)")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be less than sigma_max ({self.sigma_max})")
        return self


class EDM(Process):
    """EDM's preconditioning (Karras et al. 2022, table 1, sec. 5):
        D(x; sigma) = c_skip x + c_out F(c_in x; c_noise),
        c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),  c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),
        c_in = 1 / sqrt(sigma^2 + sigma_d^2),       c_noise = ln(sigma) / 4 (times C_NOISE_SCALE here);
    trained at ln(sigma) ~ N(P_mean, P_std^2) with the weight lambda(sigma) = 1 / c_out^2."""

    Options = EDMOptions
    name = "edm"
    default_spacing = "karras"  # EDM eq. 5: uniform in sigma would leave few steps where sigma < sigma_data

    def __init__(self, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, P_mean=-1.2, P_std=1.2, **_):
        self.sigma_data, self.sigma_min, self.sigma_max, self.P_mean, self.P_std = sigma_data, sigma_min, sigma_max, P_mean, P_std

    def scale(self, sigma):
        return torch.ones_like(sigma)

    def time(self, sigma):
        return sigma  # VE: the native time is sigma itself

    def sigma_at(self, time):
        return time

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) of EDM table 1."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1.0 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4 * C_NOISE_SCALE
        return c_skip, c_out, c_in, c_noise

    def network_input(self, x, sigma):
        _, _, c_in, c_noise = self.coefficients(sigma.double())
        return x * _col(c_in, x), c_noise.to(x.device, torch.float32)

    def x0_from_output(self, out, x, sigma):
        c_skip, c_out, _, _ = self.coefficients(sigma.double())
        return _col(c_skip, x) * x + _col(c_out, x) * out

    def loss(self, p_uncond=0.0, num_classes=0, **_):
        return EDMLoss(self, p_uncond, num_classes)

    @classmethod
    def data_defaults(cls, x: torch.Tensor) -> dict:
        """sigma_data: the standard deviation of the training data (EDM sec. 5: 0.5 for images)."""
        return {"sigma_data": round(float(x.double().std()), 4)}


class EDMLoss:
    """E_{sigma, x_0, eps} lambda(sigma) || D(x_0 + sigma eps; sigma) - x_0 ||^2 (EDM eq. 2, table 1),
    written as || F - (x_0 - c_skip x) / c_out ||^2, the effective target of the network."""

    def __init__(self, process: EDM, p_uncond: float = 0.0, num_classes: int = 0):
        self.process, self.p_uncond, self.num_classes = process, p_uncond, num_classes

    def __call__(self, net, x0: torch.Tensor, y, generator: torch.Generator) -> torch.Tensor:
        p = self.process
        B = x0.shape[0]
        n = torch.randn(B, device=x0.device, generator=generator, dtype=torch.float64)
        sigma = (p.P_mean + p.P_std * n).exp()  # ln(sigma) ~ N(P_mean, P_std^2)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x = x0 + _col(sigma, x0) * eps
        y = drop_labels(y, self.p_uncond, self.num_classes, generator)
        c_skip, c_out, c_in, c_noise = p.coefficients(sigma)
        out = net(x * _col(c_in, x0), c_noise.to(x0.device, torch.float32), y)
        goal = (x0 - _col(c_skip, x0) * x) / _col(c_out, x0)
        return torch.nn.functional.mse_loss(out.float(), goal.float())


# ---------------------------------------------------------------------------------------------
# Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; Esser et al. 2024)


class FlowOptions(PluginOptions):
    t_sampling: Literal["logit-normal", "uniform"] = Field("logit-normal", description="law of t in training (Esser et al. 2024, sec. 3.1)")
    t_mean: float = Field(0.0, description="mean m of the logit-normal t: logit(t) ~ N(m, s^2)")
    t_std: float = Field(1.0, gt=0, description="standard deviation s of the logit-normal t")
    t_min: float = Field(1e-4, gt=0, lt=1, description="lowest t sampled")
    t_max: float = Field(0.999, gt=0, lt=1, description="highest t sampled (t = 1 is pure noise, sigma = infinity)")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.t_min < self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be less than t_max ({self.t_max})")
        return self


class Flow(Process):
    """The straight path x_t = (1 - t) x_0 + t eps; the network predicts the velocity
    v = dx_t/dt = eps - x_0 (conditional flow matching), so x0_hat = x_t - t v_hat. In EDM's
    terms a = 1 - t and sigma = t / (1 - t); c_noise = 1000 t, as Stable Diffusion 3 feeds it."""

    Options = FlowOptions
    name = "flow"

    def __init__(self, t_sampling="logit-normal", t_mean=0.0, t_std=1.0, t_min=1e-4, t_max=0.999, **_):
        self.t_sampling, self.t_mean, self.t_std = t_sampling, t_mean, t_std
        self.sigma_min, self.sigma_max = t_min / (1 - t_min), t_max / (1 - t_max)

    def scale(self, sigma):
        return 1.0 / (1.0 + sigma)

    def time(self, sigma):
        return sigma / (1.0 + sigma)

    def sigma_at(self, time):
        return time / (1.0 - time)

    def network_input(self, x, sigma):
        return x * _col(self.scale(sigma), x), (self.time(sigma) * C_NOISE_SCALE).to(x.device, torch.float32)

    def x0_from_output(self, out, x, sigma):
        a = _col(self.scale(sigma), x)
        return x * a - _col(self.time(sigma), x) * out  # x0 = x_t - t v

    def draw_t(self, B: int, device, generator: torch.Generator) -> torch.Tensor:
        if self.t_sampling == "uniform":
            return torch.rand(B, device=device, generator=generator, dtype=torch.float64)
        n = torch.randn(B, device=device, generator=generator, dtype=torch.float64)
        return torch.sigmoid(self.t_mean + self.t_std * n)  # logit-normal (Esser et al. 2024, eq. 19)

    def loss(self, p_uncond=0.0, num_classes=0, **_):
        return FlowLoss(self, p_uncond, num_classes)


class FlowLoss:
    """Conditional flow matching: E_{t, x_0, eps} || v_hat(x_t, t) - (eps - x_0) ||^2 (Lipman et al.
    2023, eq. 23 for the straight path; Liu et al. 2023)."""

    def __init__(self, process: Flow, p_uncond: float = 0.0, num_classes: int = 0):
        self.process, self.p_uncond, self.num_classes = process, p_uncond, num_classes

    def __call__(self, net, x0: torch.Tensor, y, generator: torch.Generator) -> torch.Tensor:
        t = self.process.draw_t(x0.shape[0], x0.device, generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        tc = _col(t, x0)
        x_t = (1 - tc) * x0 + tc * eps
        y = drop_labels(y, self.p_uncond, self.num_classes, generator)
        out = net(x_t, (t * C_NOISE_SCALE).to(x0.device, torch.float32), y)
        return torch.nn.functional.mse_loss(out.float(), (eps - x0).float())
