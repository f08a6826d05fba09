"""DiT, the Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

    x_t (B, C, H, W) -> patchify: conv p x p, stride p      -> tokens (B, N, D), N = (H/p)(W/p)
                     -> + fixed 2-D sin-cos positions (of the H/p x W/p grid)
                     -> depth x DiT block (adaLN-Zero), conditioned on c = emb(t) + emb(y)
                     -> final layer: adaLN, linear to p * p * C * out_mult per token
                     -> unpatchify -> (B, C * out_mult, H, W)

The image is cut into p x p patches, each patch becomes one token of width D, and a plain
Vision Transformer denoises the sequence of tokens. The noise level t and the class y do not
enter as tokens: they make one conditioning vector c (sinusoidal embedding of t through an MLP,
plus a learned label embedding; index ``num_classes`` is the null label of classifier-free
guidance), which sets the LayerNorms of every block (adaptive layer norm, DiT sec. 3.2).

adaLN-Zero. Each block regresses six vectors from c and uses them around its two residual
branches (LN without learned affine, "*" broadcast over the tokens):

    (beta_1, gamma_1, alpha_1, beta_2, gamma_2, alpha_2) = W SiLU(c) + b
    h <- h + alpha_1 * Attn(LN(h) (1 + gamma_1) + beta_1)
    h <- h + alpha_2 * MLP(LN(h) (1 + gamma_2) + beta_2)

W and b start at zero, so every gate alpha is 0 and every block starts as the identity; the
final layer's modulation and its linear start at zero too, so the untrained network outputs
exactly 0 whatever its input (the "Zero" of adaLN-Zero, the best of the paper's four
conditioning schemes, its fig. 5).

With ``long_skips`` the network is a U-ViT-style transformer (Bao et al. 2023, "All are Worth
Words"): the output of each block of the first half is kept, and each block of the second half
first takes h <- Linear([h, skip]) of the matching one (last kept, first used). The projection
starts as [I, 0], so such a network starts as the same network without skips.

Why not 2-D points: a point has no spatial layout to cut into patches. As one token,
self-attention attends only to itself and DiT reduces to an MLP with adaLN; use ``mlp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ddpmctl.errors import OptionsError
from ddpmctl.networks.embeddings import TimeLabelEmbedding
from ddpmctl.registry import PluginOptions


def check_width(width: int, heads: int) -> None:
    """D splits into ``heads`` heads, and into four quarters for the 2-D sin-cos positions."""
    if width % heads:
        raise OptionsError(f"heads {heads} does not divide width {width}; choose a width that is a multiple of {heads}.")
    if width % 4:
        raise OptionsError(f"width {width} is not a multiple of 4, which the 2-D sin-cos positions need; choose {4 * math.ceil(width / 4)}.")


def check_shape(data_shape: tuple[int, ...], patch_size: int) -> None:
    """DiT needs images (C, H, W) whose sides are multiples of the patch size."""
    if len(data_shape) == 1:
        raise OptionsError("dit is an image network; use mlp for 2-D points.")
    if len(data_shape) != 3:
        raise OptionsError(f"dit needs images (C, H, W), not data of shape {tuple(data_shape)}.")
    _, H, W = data_shape
    if H % patch_size or W % patch_size:
        raise OptionsError(f"patch_size {patch_size} does not divide the {H}x{W} image; choose a divisor of {math.gcd(H, W)}.")


class DiTOptions(PluginOptions):
    patch_size: int = Field(2, ge=1, le=32, description="side p of the square patches; an H x W image becomes (H/p)(W/p) tokens")
    width: int = Field(128, ge=8, le=4096, description="hidden size D of every token (a multiple of 4 and of `heads`)")
    depth: int = Field(6, ge=1, le=64, description="number of transformer blocks")
    heads: int = Field(4, ge=1, le=64, description="attention heads (they split `width`)")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="hidden size of each block's MLP, in multiples of `width`")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention weights and in each MLP")
    long_skips: bool = Field(False, description="U-ViT long skips (Bao et al. 2023): each block of the second half also reads the matching block of the first half")

    @model_validator(mode="after")
    def _width_splits(self):
        check_width(self.width, self.heads)  # refused before any data is loaded
        return self


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Transformer positions: [sin(pos w_i), cos(pos w_i)], w_i = 10000^(-i / (dim/2)). (N,) -> (N, dim)."""
    omega = 10_000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angle = pos.double()[:, None] * omega[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Fixed positions of a gh x gw grid of tokens in row-major order: half the channels
    encode the row, half the column (as in MAE and DiT). -> (gh * gw, dim), float32."""
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], dim=1)
    return emb.float()


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: h (1 + gamma) + beta, one (beta, gamma) per example for all its tokens."""
    return h * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over the N tokens: softmax(q k^T / sqrt(d)) v per head."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, N, D = h.shape
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, heads, N, d) each
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """One DiT block with adaLN-Zero: two residual branches (attention, MLP), each pre-normed by a
    LayerNorm whose shift and scale come from c, and gated by alpha (zero at the start)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)  # c -> (beta_1, gamma_1, alpha_1, beta_2, gamma_2, alpha_2)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        beta1, gamma1, alpha1, beta2, gamma2, alpha2 = self.ada(F.silu(c)).chunk(6, dim=1)  # (B, D) each
        h = h + alpha1[:, None] * self.attn(modulate(self.norm1(h), beta1, gamma1))
        return h + alpha2[:, None] * self.mlp(modulate(self.norm2(h), beta2, gamma2))


class FinalLayer(nn.Module):
    """LN(h) (1 + gamma) + beta, then a linear to the p * p * C_out values of each patch."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.ada(F.silu(c)).chunk(2, dim=1)
        return self.linear(modulate(self.norm(h), beta, gamma))


class DiT(nn.Module):
    """A Diffusion Transformer (DiT) for images: patches as tokens, conditioned by adaLN-Zero.

    forward(x_t, t, y=None) -> eps (or x0, v) of x_t's shape, with out_mult times the channels
    when a variance is learned too; t is (B,), or (B, 2) when built with ``noise_inputs=2``.
    """

    Options = DiTOptions

    def __init__(
        self,
        patch_size: int = 2,
        width: int = 128,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        long_skips: bool = False,
        *,
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        out_mult: int = 1,
        noise_inputs: int = 1,
    ):
        super().__init__()
        check_shape(tuple(data_shape), patch_size)
        check_width(width, heads)
        C, H, W = data_shape
        self.data_shape, self.num_classes, self.out_mult = tuple(data_shape), num_classes, out_mult
        self.p, self.grid, self.c_out = patch_size, (H // patch_size, W // patch_size), C * out_mult
        self.embed = TimeLabelEmbedding(width, width, num_classes, noise_inputs)  # c = MLP(sin(t)) + E[y]
        self.patchify = nn.Conv2d(C, width, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_2d(width, *self.grid), persistent=False)  # (N, D), fixed
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.skips = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(depth // 2 if long_skips else 0))
        self.final = FinalLayer(width, patch_size * patch_size * self.c_out)
        self._init_weights(width)

    def _init_weights(self, width: int) -> None:
        """DiT's initialisation: Xavier-uniform linears (the patch conv as a linear), zero biases;
        then zero every adaLN regression and the output linear (adaLN-Zero). The conditioning
        embedding keeps its own initialisation."""
        for module in [*self.blocks.modules(), *self.final.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(width, -1))
        nn.init.zeros_(self.patchify.bias)
        for layer in [*(b.ada for b in self.blocks), self.final.ada, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            for skip in self.skips:  # [I, 0]: the skip is read from the start, with weight 0
                skip.weight.zero_()
                skip.weight[:, :width].copy_(torch.eye(width))
                skip.bias.zero_()

    def unpatchify(self, out: torch.Tensor) -> torch.Tensor:
        """(B, N, p * p * C_out) -> (B, C_out, H, W): each token's values become its patch."""
        (gh, gw), p = self.grid, self.p
        out = out.reshape(out.shape[0], gh, gw, p, p, self.c_out)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(out.shape[0], self.c_out, gh * p, gw * p)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.embed(t, y if self.num_classes else None)  # (B, D); y = None: the null label
        h = self.patchify(x_t).flatten(2).transpose(1, 2) + self.pos  # (B, N, D)
        depth, kept = len(self.blocks), []
        for i, block in enumerate(self.blocks):
            j = i - (depth - len(self.skips))  # index of this block's long skip, from the second half
            if j >= 0:
                h = self.skips[j](torch.cat([h, kept.pop()], dim=-1))
            h = block(h, c)
            if i < len(self.skips):
                kept.append(h)
        return self.unpatchify(self.final(h, c))  # (B, C * out_mult, H, W)
