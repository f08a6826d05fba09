"""A residual MLP over random Fourier features of x_t (Tancik et al. 2020,
"Fourier Features Let Networks Learn High Frequency Functions in Low Dimensional Domains"):
gamma(x) = [cos(2 pi B x), sin(2 pi B x)], B ~ N(0, scale^2), fixed at construction."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from ddpmctl.networks.embeddings import TimeLabelEmbedding
from ddpmctl.registry import PluginOptions


class FourierMLPOptions(PluginOptions):
    width: int = Field(128, ge=8, le=8192, description="hidden width")
    depth: int = Field(3, ge=1, le=64, description="number of residual blocks")
    features: int = Field(64, ge=1, le=4096, description="number of random frequencies")
    scale: float = Field(1.0, gt=0, description="standard deviation of the frequencies")
    emb_dim: int = Field(128, ge=4, le=4096, description="size of the sinusoidal time embedding")


class FourierMLP(nn.Module):
    """forward(x_t, t, y=None) -> output of x_t's shape, through Fourier features of x_t."""

    Options = FourierMLPOptions

    def __init__(self, width=128, depth=3, features=64, scale=1.0, emb_dim=128, *, data_shape, num_classes=0, out_mult=1):
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.out_mult = out_mult
        g = torch.Generator().manual_seed(0)  # the frequencies are part of the architecture
        self.register_buffer("B", torch.randn(d, features, generator=g) * scale)
        self.embed = TimeLabelEmbedding(emb_dim, width, num_classes)
        self.inp = nn.Linear(2 * features + d, width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(width), "fc1": nn.Linear(width, width), "emb": nn.Linear(width, width), "fc2": nn.Linear(width, width)})
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d * out_mult))

    def forward(self, x_t, t, y=None):
        B = x_t.shape[0]
        x = x_t.reshape(B, -1)
        proj = 2 * math.pi * x @ self.B
        h = self.inp(torch.cat([proj.cos(), proj.sin(), x], dim=1))
        emb = nn.functional.silu(self.embed(t, y))
        for blk in self.blocks:
            z = blk["fc1"](nn.functional.silu(blk["norm"](h))) + blk["emb"](emb)
            h = h + blk["fc2"](nn.functional.silu(z))
        out = self.out(h)
        return out.reshape(B, self.out_mult * self.data_shape[0], *self.data_shape[1:])
