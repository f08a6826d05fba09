"""2-D distributions, seeded, on a common scale (most mass within [-2.5, 2.5]^2, std about 1).

Each plugin draws ``n`` training points with ``seed``; ``fresh(n, seed)`` draws an
independent set from the same distribution (for metric floors).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from pydantic import Field

from ddpmctl.datasets.base import Dataset
from ddpmctl.registry import PluginOptions, with_options

Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, "torch.Tensor | None"]]

_FRESH_OFFSET = 1_000_003  # fresh draws never reuse the training seed's stream


class ToyOptions(PluginOptions):
    n: int = Field(100_000, ge=1, le=10_000_000, description="number of training points")
    seed: int = Field(0, ge=0, description="seed of the training draw")


def _dataset(name: str, draw: Draw, n: int, seed: int, num_classes: int = 0) -> Dataset:
    x, y = draw(n, torch.Generator().manual_seed(seed))

    def fresh(m: int, s: int):
        return draw(m, torch.Generator().manual_seed(_FRESH_OFFSET + s))

    return Dataset(name=name, x=x.float(), y=y, num_classes=num_classes, kind="points", fresh_fn=fresh)


def _mixture(centers: torch.Tensor, std: float) -> Draw:
    def draw(n, g):
        k = torch.randint(0, len(centers), (n,), generator=g)
        return centers[k] + std * torch.randn(n, 2, generator=g, dtype=torch.float64), k

    return draw


class EightGaussiansOptions(ToyOptions):
    radius: float = Field(2.0, gt=0, description="radius of the circle the modes sit on")
    std: float = Field(0.2, gt=0, description="standard deviation of each mode")


def eight_centers(radius: float = 2.0) -> torch.Tensor:
    """The modes of 8gaussians: eight points evenly spaced on a circle, (8, 2) float64."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


@with_options(EightGaussiansOptions)
def EightGaussians(n=100_000, seed=0, radius=2.0, std=0.2) -> Dataset:
    """Eight gaussians evenly spaced on a circle."""
    return _dataset("8gaussians", _mixture(eight_centers(radius), std), n, seed, num_classes=8)


class GaussianMixtureOptions(ToyOptions):
    modes: int = Field(25, ge=1, le=400, description="number of modes")
    layout: Literal["grid", "circle", "random"] = Field("grid", description="where the modes sit")
    std: float = Field(0.08, gt=0, description="standard deviation of each mode")
    spread: float = Field(2.0, gt=0, description="modes lie within [-spread, spread]^2")


@with_options(GaussianMixtureOptions)
def GaussianMixture(n=100_000, seed=0, modes=25, layout="grid", std=0.08, spread=2.0) -> Dataset:
    """An equally weighted mixture of isotropic gaussians with a configurable number of modes."""
    if layout == "grid":
        side = math.ceil(math.sqrt(modes))
        ticks = torch.linspace(-spread, spread, side, dtype=torch.float64) if side > 1 else torch.zeros(1, dtype=torch.float64)
        centers = torch.cartesian_prod(ticks, ticks)[:modes]
    elif layout == "circle":
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        centers = spread * torch.stack([angle.cos(), angle.sin()], dim=1)
    else:
        g = torch.Generator().manual_seed(12345)
        centers = (torch.rand(modes, 2, generator=g, dtype=torch.float64) * 2 - 1) * spread
    return _dataset("gaussian-mixture", _mixture(centers, std), n, seed, num_classes=modes)


class NoiseOptions(ToyOptions):
    noise: float = Field(0.05, ge=0, description="standard deviation of the gaussian noise added")


@with_options(NoiseOptions)
def TwoMoons(n=100_000, seed=0, noise=0.05) -> Dataset:
    """Two interleaving half circles (as sklearn's make_moons), centred and scaled."""

    def draw(m, g):
        label = torch.randint(0, 2, (m,), generator=g)
        theta = torch.rand(m, generator=g, dtype=torch.float64) * math.pi
        upper = torch.stack([theta.cos(), theta.sin()], 1)
        lower = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)
        x = torch.where(label[:, None] == 0, upper, lower)
        x = x + noise * torch.randn(m, 2, generator=g, dtype=torch.float64)
        return (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 1.6, label

    return _dataset("moons", draw, n, seed, num_classes=2)


@with_options(NoiseOptions)
def SwissRoll(n=100_000, seed=0, noise=0.05) -> Dataset:
    """The 2-D swiss roll: (t cos t, t sin t), t uniform in [1.5 pi, 4.5 pi], scaled."""

    def draw(m, g):
        t = 1.5 * math.pi * (1 + 2 * torch.rand(m, generator=g, dtype=torch.float64))
        x = torch.stack([t * t.cos(), t * t.sin()], 1) / 6.0
        return x + noise * torch.randn(m, 2, generator=g, dtype=torch.float64), None

    return _dataset("swissroll", draw, n, seed)


class SpiralOptions(NoiseOptions):
    arms: int = Field(2, ge=1, le=8, description="number of spiral arms")
    turns: float = Field(1.25, gt=0, le=5, description="turns of each arm")


@with_options(SpiralOptions)
def Spiral(n=100_000, seed=0, noise=0.05, arms=2, turns=1.25) -> Dataset:
    """Interleaved Archimedean spirals (r proportional to the angle), one class per arm."""

    def draw(m, g):
        arm = torch.randint(0, arms, (m,), generator=g)
        u = torch.rand(m, generator=g, dtype=torch.float64).sqrt()  # uniform along the arm's length
        theta = u * turns * 2 * math.pi + arm * (2 * math.pi / arms)
        r = 2.2 * u
        x = torch.stack([r * theta.cos(), r * theta.sin()], 1)
        return x + noise * torch.randn(m, 2, generator=g, dtype=torch.float64), arm

    return _dataset("spiral", draw, n, seed, num_classes=arms)


class CheckerboardOptions(ToyOptions):
    squares: int = Field(4, ge=2, le=16, description="squares per side of the board")
    size: float = Field(4.0, gt=0, description="side length of the board")


@with_options(CheckerboardOptions)
def Checkerboard(n=100_000, seed=0, squares=4, size=4.0) -> Dataset:
    """Uniform on the dark squares of a checkerboard centred at the origin."""
    cell = size / squares

    def draw(m, g):
        # Choose a row and a column, then shift the column so the square is a dark one.
        i = torch.randint(0, squares, (m,), generator=g)
        j = torch.randint(0, squares // 2, (m,), generator=g) * 2 + (i % 2)
        j = j.clamp(max=squares - 1)
        u = torch.rand(m, 2, generator=g, dtype=torch.float64)
        x = torch.stack([j + u[:, 0], i + u[:, 1]], 1) * cell - size / 2
        return x, None

    return _dataset("checkerboard", draw, n, seed)


class CirclesOptions(NoiseOptions):
    rings: int = Field(2, ge=1, le=10, description="number of concentric circles")
    radius: float = Field(2.0, gt=0, description="radius of the outer circle")


@with_options(CirclesOptions)
def Circles(n=100_000, seed=0, noise=0.05, rings=2, radius=2.0) -> Dataset:
    """Concentric circles at radius r k / rings, k = 1 .. rings, points in proportion to length."""

    def draw(m, g):
        w = torch.arange(1, rings + 1, dtype=torch.float64)
        ring = torch.multinomial(w / w.sum(), m, replacement=True, generator=g)
        theta = torch.rand(m, generator=g, dtype=torch.float64) * 2 * math.pi
        r = radius * (ring + 1) / rings
        x = torch.stack([r * theta.cos(), r * theta.sin()], 1)
        return x + noise * torch.randn(m, 2, generator=g, dtype=torch.float64), ring

    return _dataset("circles", draw, n, seed, num_classes=rings)
