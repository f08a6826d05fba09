"""A residual MLP for 2-D data with a sinusoidal time embedding and an optional class input."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from ddpmctl.networks.embeddings import TimeLabelEmbedding
from ddpmctl.registry import PluginOptions


class MLPOptions(PluginOptions):
    width: int = Field(128, ge=8, le=8192, description="hidden width")
    depth: int = Field(4, ge=1, le=64, description="number of residual blocks")
    emb_dim: int = Field(128, ge=4, le=4096, description="size of the sinusoidal time embedding")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside each block")


class Block(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, emb):
        z = self.fc1(nn.functional.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(nn.functional.silu(z)))


class MLP(nn.Module):
    """forward(x_t, t, y=None) -> output of the same shape as x_t (eps, x0 or v); t is (B,), or
    (B, 2) when built with ``noise_inputs=2``."""

    Options = MLPOptions

    def __init__(self, width=128, depth=4, emb_dim=128, dropout=0.0, *, data_shape, num_classes=0, out_mult=1, noise_inputs=1):
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.out_mult = out_mult
        self.embed = TimeLabelEmbedding(emb_dim, width, num_classes, noise_inputs)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(Block(width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d * out_mult))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        B = x_t.shape[0]
        emb = nn.functional.silu(self.embed(t, y))
        h = self.inp(x_t.reshape(B, -1))
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)
        shape = (B, self.out_mult * self.data_shape[0], *self.data_shape[1:]) if self.out_mult > 1 else (B, *self.data_shape)
        return out.reshape(shape)
