"""Interpolation in the latent x_T of deterministic DDIM (Song et al. 2021, sec. 5.3):
spherical interpolation between two latents, decoded with eta = 0 (a few-step model: with its
deterministic jumps); real examples are first encoded by DDIM inversion."""

from __future__ import annotations

import torch

from ddpmctl.samplers.ddim import ddim, ddim_invert
from ddpmctl.samplers.fewstep import few_step as few_step_sampler


def slerp(z0: torch.Tensor, z1: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation, row by row (Shoemake 1985; DDIM sec. 5.3):
        slerp(z0, z1; a) = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1,
        theta = arccos(<z0, z1> / (|z0| |z1|)).
    z0, z1: (B, *D), alphas: (K,) in [0, 1]; returns (K, B, *D). Rows that are (anti)parallel
    fall back to linear interpolation."""
    B = z0.shape[0]
    a0, a1 = z0.reshape(B, -1).double(), z1.reshape(B, -1).double()
    cos = (a0 * a1).sum(1) / (a0.norm(dim=1) * a1.norm(dim=1)).clamp(min=1e-12)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))  # (B,)
    a = alphas.to(a0.device, torch.float64).reshape(-1, 1, 1)  # (K, 1, 1), where the latents are
    sin = torch.sin(theta).reshape(1, B, 1)
    th = theta.reshape(1, B, 1)
    w0 = torch.where(sin > 1e-6, torch.sin((1 - a) * th) / sin, 1 - a)
    w1 = torch.where(sin > 1e-6, torch.sin(a * th) / sin, a)
    out = w0 * a0.unsqueeze(0) + w1 * a1.unsqueeze(0)  # (K, B, prod D)
    return out.reshape(len(alphas), *z0.shape).to(z0.dtype)


def decode(denoiser, x_T: torch.Tensor, steps: int, y: torch.Tensor | None = None, spacing: str = "auto", few_step: bool = False) -> torch.Tensor:
    """x_T -> x_0 with deterministic DDIM (eta = 0), or a few-step model's deterministic jumps."""
    if few_step:
        x0, _ = few_step_sampler(denoiser, x_T, steps, None, None, y, gamma=0.0, spacing=spacing)
        return x0
    x0, _ = ddim(denoiser, x_T, steps, None, None, y, eta=0.0, spacing=spacing)
    return x0


def encode(denoiser, x_0: torch.Tensor, steps: int, y: torch.Tensor | None = None, spacing: str = "auto",
           refine: int = 3) -> torch.Tensor:
    """x_0 -> x_T by DDIM inversion (``refine`` fixed-point iterations per step make decoding
    give back x_0 closely)."""
    x_T, _ = ddim_invert(denoiser, x_0, steps, y, spacing, refine=refine)
    return x_T


def interpolate(denoiser, z0: torch.Tensor, z1: torch.Tensor, frames: int, steps: int,
                y: torch.Tensor | None = None, spacing: str = "auto", few_step: bool = False) -> torch.Tensor:
    """Decode `frames` latents spherically interpolated from z0 to z1 (both (B, *D)); returns
    (frames, B, *D). ``y`` (B,) labels, repeated for every frame."""
    K, B = frames, z0.shape[0]
    z = slerp(z0, z1, torch.linspace(0, 1, K, dtype=torch.float64))  # (K, B, *D)
    y_all = None if y is None else y.repeat(K)
    x = decode(denoiser, z.reshape(K * B, *z0.shape[1:]), steps, y_all, spacing, few_step)
    return x.reshape(K, B, *z0.shape[1:])
