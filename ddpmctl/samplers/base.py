"""What every sampler shares: the callback type and timestep spacings."""

from __future__ import annotations

from typing import Callable, Optional

import torch

# callback(i, n, t, x_t, x0_hat): step i of n, at training timestep t (int).
Callback = Optional[Callable[[int, int, int, torch.Tensor, torch.Tensor], None]]


def check_finite(x: torch.Tensor, step: int, t: int, sampler: str) -> None:
    """Fail at the first non-finite value, naming where it appeared."""
    if not torch.isfinite(x).all():
        from ddpmctl.errors import NumericalError

        raise NumericalError(
            f"{sampler} produced NaN/inf at step {step} (timestep t={t}); try clipping x0 "
            "(--clip), float32 instead of reduced precision, or a checkpoint from before the "
            "loss diverged."
        )


def uniform_timesteps(T: int, steps: int) -> torch.Tensor:
    """`steps` timesteps evenly spread over 0 .. T-1, always including T-1 and 0, increasing."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    if steps == T:
        return torch.arange(T)
    return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique()


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
