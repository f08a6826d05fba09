"""Embeddings shared by the networks."""

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer) timesteps, as in the Transformer and DDPM. (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


class TimeLabelEmbedding(nn.Module):
    """t -> sinusoidal -> MLP, plus an optional learned label embedding (index num_classes = null
    label, used for classifier-free guidance).

    With ``noise_inputs=2`` t is (B, 2): the noise level and a second one (an average-velocity
    model's gap t - r, MeanFlow, Geng et al. 2025), each through its own sinusoidal embedding and
    MLP, summed. The second MLP ends at zero, so a network that reads two noise levels starts as
    the one-level network whose weights it was given (``load_teacher``)."""

    def __init__(self, dim: int, out_dim: int, num_classes: int = 0, noise_inputs: int = 1):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.label = nn.Embedding(num_classes + 1, out_dim) if num_classes > 0 else None
        self.mlp2 = None
        if noise_inputs == 2:
            self.mlp2 = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
            nn.init.zeros_(self.mlp2[-1].weight)
            nn.init.zeros_(self.mlp2[-1].bias)
        elif noise_inputs != 1:
            raise ValueError(f"noise_inputs must be 1 or 2, got {noise_inputs}")

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.mlp2 is not None:
            emb = self.mlp(timestep_embedding(t[:, 0], self.dim)) + self.mlp2(timestep_embedding(t[:, 1], self.dim))
        else:
            emb = self.mlp(timestep_embedding(t, self.dim))
        if self.label is not None:
            if y is None:  # no label given: the null (unconditional) label
                y = torch.full((t.shape[0],), self.label.num_embeddings - 1, dtype=torch.long, device=t.device)
            emb = emb + self.label(y)
        return emb
