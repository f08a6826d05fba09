"""What every sampler shares: the callback type, the noise-level grids and the noise.

Grids. A sampler visits a decreasing sequence of noise levels sigma_1 > ... > sigma_S (EDM's
sigma; processes.py), then sigma = 0. ``sigma_grid`` builds it for any process from a spacing:

    uniform     even in the process's native time (DDPM: the timestep t; EDM: sigma; flow: t)
    quadratic   even in sqrt(time): dense near the data (DDIM sec. D.2)
    logsnr      even in log sigma, i.e. in the log-SNR (DPM-Solver, Lu et al. 2022, sec. 3.3)
    karras      even in sigma^(1/rho) between sigma_min and sigma_max (Karras et al. 2022, eq. 5)
    cosine      even in the cosine schedule's time t, sigma = tan(pi t / 2) (Nichol & Dhariwal
                2021, eq. 17 without its offset): dense where sigma is about 1, the scale of the
                data, sparse at both ends where the denoiser barely changes

A discrete model (DDPM) knows only its T levels: the targets are moved to the nearest distinct
levels (``spread_timesteps``), so the network is only ever asked at levels it was trained on.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch

from ddpmctl.errors import NumericalError

# callback(i, n, sigma, x_t, x0_hat): after step i of n, x_t the process's own (unscaled) state at
# the next level, and x0_hat at noise level sigma (a float).
Callback = Optional[Callable[[int, int, float, torch.Tensor, torch.Tensor], None]]
SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "cosine")
Spacing = Literal["auto", "uniform", "quadratic", "logsnr", "karras", "cosine"]  # auto: the process's default_spacing


def check_finite(x: torch.Tensor, step: int, sigma: float, sampler: str) -> None:
    """Fail at the first non-finite value, naming where it appeared."""
    if not torch.isfinite(x).all():
        raise NumericalError(
            f"{sampler} produced NaN/inf at step {step} (noise level sigma={sigma:.4g}); try clipping x0 "
            "(--clip), float32 instead of reduced precision, or a checkpoint from before the "
            "loss diverged."
        )


def fractional_timestep(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Where ``value`` falls on an increasing per-timestep ``grid`` (for example log sigma_t),
    as a fractional timestep, by linear interpolation between neighbours; clamped to [0, T-1]."""
    T = grid.shape[0]
    value = value.to(grid.dtype)
    hi = torch.searchsorted(grid, value).clamp(1, T - 1)
    lo = hi - 1
    w = (value - grid[lo]) / (grid[hi] - grid[lo])
    return (lo.to(grid.dtype) + w).clamp(0, T - 1)


def spread_timesteps(grid: torch.Tensor, steps: int, lo: int = 0, hi: int | None = None) -> torch.Tensor:
    """`steps` distinct training timesteps from ``lo`` to ``hi`` (both included), increasing,
    evenly spaced on ``grid``, a per-timestep quantity increasing in t: t itself (uniform
    spacing), sqrt t (quadratic), -lambda_t (log-SNR), sigma_t^(1/rho) (Karras et al.),
    atan sigma_t (cosine).

    Each target point is mapped to the nearest timestep by interpolating on the grid. Where
    the model's own timesteps are coarser than the even spacing (near an end), the
    neighbouring timestep is taken and the rest is spread again, so a sampler asked for S
    steps takes S distinct steps instead of piling them on one end.
    """
    T = grid.shape[0]
    hi = T - 1 if hi is None else hi
    if not 1 <= steps <= hi - lo + 1:
        raise ValueError(f"steps must be between 1 and {hi - lo + 1}, got {steps}")
    if steps == 1:
        return torch.tensor([hi])
    head, tail = [lo], [hi]
    while len(head) + len(tail) < steps:
        h = float(grid[hi] - grid[lo]) / (steps - len(head) - len(tail) + 1)  # the even spacing left
        if float(grid[hi] - grid[hi - 1]) >= h:
            hi -= 1
            tail.append(hi)
        elif float(grid[lo + 1] - grid[lo]) >= h:
            lo += 1
            head.append(lo)
        else:
            break
    n = steps - len(head) - len(tail)
    targets = torch.linspace(float(grid[lo]), float(grid[hi]), n + 2, dtype=torch.float64)[1:-1]
    mid = fractional_timestep(targets, grid.double()).round().long().tolist()
    for i in range(n):  # no two equal: push up past the previous ...
        mid[i] = max(mid[i], (mid[i - 1] if i else lo) + 1)
    for i in reversed(range(n)):  # ... and back below the next
        mid[i] = min(mid[i], (mid[i + 1] if i < n - 1 else hi) - 1)
    return torch.tensor(head + mid + tail[::-1], dtype=torch.long)


def uniform_timesteps(T: int, steps: int) -> torch.Tensor:
    """`steps` timesteps evenly spread over 0 .. T-1, always including T-1 (and 0 when
    steps > 1), increasing."""
    return spread_timesteps(torch.arange(T, dtype=torch.float64), steps)


def quadratic_timesteps(T: int, steps: int) -> torch.Tensor:
    """Timesteps tau_i = (i / (S-1))^2 (T-1), evenly spaced in sqrt t: dense near the data,
    sparse near the noise (Song et al. 2021, DDIM, sec. D.2, who use it for CIFAR10), increasing."""
    return spread_timesteps(torch.arange(T, dtype=torch.float64).sqrt(), steps)


def spaced_timesteps(T: int, steps: int, spacing: str) -> torch.Tensor:
    """The ``uniform`` or ``quadratic`` subsequence of ``steps`` timesteps, increasing."""
    return (quadratic_timesteps if spacing == "quadratic" else uniform_timesteps)(T, steps)


def alpha_bar(sigma):
    """The VP alpha_bar of a noise level (float or tensor): x_t / sqrt(alpha_bar) = x_0 + sigma eps."""
    return 1.0 / (1.0 + sigma**2)


def unscaled(process, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The process's own state x_t = a(sigma) x of the scaled state x (what callbacks see)."""
    return x * float(process.scale(torch.tensor(sigma, dtype=torch.float64)))


def nearest_level(sigma: float, log_levels: torch.Tensor) -> int:
    """The index of the level nearest to ``sigma`` in log sigma (``log_levels`` increasing)."""
    return int(fractional_timestep(torch.tensor([sigma], dtype=torch.float64).log(), log_levels).round())


def snap(process, sigma: float) -> float:
    """``sigma`` as the process can be asked at it: the nearest level of a discrete model (in log
    sigma), else clamped to its range."""
    if process.levels is not None:
        return float(process.levels[nearest_level(sigma, process.levels.log())])
    return min(max(sigma, process.sigma_min), process.sigma_max)


def sigma_grid(process, steps: int, spacing: str = "uniform", rho: float = 7.0,
               sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
    """``steps`` noise levels of ``process``, decreasing, float64 (the module docstring's spacings).
    ``sigma_min`` / ``sigma_max`` (karras only; default: the process's range) are clamped to the
    process's range. A discrete model gives fewer levels when fewer lie in that range."""
    if spacing == "auto":
        spacing = process.default_spacing
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; known: {', '.join(SPACINGS)}")
    lo_s = max(sigma_min if sigma_min is not None else process.sigma_min, process.sigma_min)
    hi_s = min(sigma_max if sigma_max is not None else process.sigma_max, process.sigma_max)
    if process.levels is not None:
        return _discrete_grid(process.levels, steps, spacing, rho, lo_s, hi_s)
    lo, hi = torch.tensor(lo_s, dtype=torch.float64), torch.tensor(hi_s, dtype=torch.float64)
    u = torch.linspace(1, 0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    if spacing == "karras":  # Karras et al. eq. 5
        return (lo ** (1 / rho) + u * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho
    if spacing == "logsnr":
        return (lo.log() + u * (hi.log() - lo.log())).exp()
    if spacing == "cosine":  # sigma = tan(pi t / 2): t = (2 / pi) atan(sigma)
        return torch.tan(lo.atan() + u * (hi.atan() - lo.atan()))
    t_lo, t_hi = process.time(lo), process.time(hi)
    w = u**2 if spacing == "quadratic" else u
    return process.sigma_at(t_lo + w * (t_hi - t_lo))


def _discrete_grid(levels: torch.Tensor, steps: int, spacing: str, rho: float, lo_s: float, hi_s: float) -> torch.Tensor:
    """The levels of a discrete model nearest to the spacing's even points (``spread_timesteps``)."""
    T = len(levels)
    if spacing in ("uniform", "quadratic"):  # over all T timesteps, as DDIM and respaced DDPM pick them
        taus = spaced_timesteps(T, min(steps, T), spacing)
    elif spacing == "logsnr":
        taus = spread_timesteps(levels.log(), min(steps, T))
    elif spacing == "cosine":
        taus = spread_timesteps(levels.atan(), min(steps, T))
    else:  # karras: between the levels nearest to sigma_min and sigma_max
        lo, hi = nearest_level(lo_s, levels.log()), nearest_level(hi_s, levels.log())
        taus = spread_timesteps(levels ** (1.0 / rho), min(steps, hi - lo + 1), lo, hi)
    return levels[taus].flip(0)


Generators = "torch.Generator | list[torch.Generator] | None"


def randn(shape, generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise. With a list of generators, the rows are split evenly among
    them (generator k draws rows k*B/K .. (k+1)*B/K), so a row's noise depends only on its
    own generator, not on how many rows are drawn beside it."""
    if isinstance(generator, (list, tuple)):
        k = len(generator)
        if shape[0] % k:
            raise ValueError(f"{shape[0]} rows cannot be split among {k} generators")
        rows = shape[0] // k
        return torch.cat([torch.randn((rows, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    return randn(x.shape, generator, x.device, torch.float32).to(x.dtype)
