"""What every sampler shares: the callback type and timestep spacings."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ddpmctl.errors import NumericalError

# callback(i, n, t, x_t, x0_hat): step i of n, at training timestep t (int).
Callback = Optional[Callable[[int, int, int, torch.Tensor, torch.Tensor], None]]


def check_finite(x: torch.Tensor, step: int, t: int, sampler: str) -> None:
    """Fail at the first non-finite value, naming where it appeared."""
    if not torch.isfinite(x).all():
        raise NumericalError(
            f"{sampler} produced NaN/inf at step {step} (timestep t={t}); try clipping x0 "
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
    spacing), sqrt t (quadratic), -lambda_t (log-SNR), sigma_t^(1/rho) (Karras et al.).

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
