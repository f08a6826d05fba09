"""The DDPM U-Net (Ho et al. 2020, appendix B; the PixelCNN++-style backbone of their code).

    x_t (B, C, H, W) -> conv_in -> [ResBlock x n (+ attention) -> Downsample] per level
                     -> middle: ResBlock, attention, ResBlock
                     -> [ResBlock x (n + 1) on concat(h, skip) (+ attention) -> Upsample] per level
                     -> GroupNorm, SiLU, conv_out -> (B, C * out_mult, H, W)

Every residual block is GroupNorm -> SiLU -> conv3x3, plus a projection of the time embedding
(added to the feature map), then GroupNorm -> SiLU -> dropout -> conv3x3, plus the skip.
Self-attention (one or more heads, over all positions) is used at the resolutions listed in
``attn_resolutions``. Class labels enter through a learned label embedding added to the time
embedding (index ``num_classes`` is the null label used for classifier-free guidance); with
``cross_attention`` the attention levels also attend to a few tokens made from the label.

Options left at ``None`` are derived from ``data_shape`` (see ``default_sizes``), so one
config trains a sensible network on 16x16 gray, 28/32 gray and 32x32 RGB data.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ddpmctl.errors import OptionsError
from ddpmctl.networks.embeddings import TimeLabelEmbedding
from ddpmctl.registry import PluginOptions


class UNetOptions(PluginOptions):
    channels: Optional[int] = Field(None, ge=4, le=1024, description="base channels (default: from the image size)")
    channel_mult: Optional[tuple[int, ...]] = Field(None, min_length=1, max_length=6, description="channels per level, in multiples of `channels`; one level per entry (default: from the image size)")
    num_res_blocks: Optional[int] = Field(None, ge=1, le=8, description="residual blocks per level (default: from the image size)")
    attn_resolutions: Optional[tuple[int, ...]] = Field(None, description="feature-map sizes (e.g. 8) that get self-attention (default: from the image size)")
    num_heads: int = Field(1, ge=1, le=32, description="attention heads")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside residual blocks (DDPM used 0.1 on CIFAR-10)")
    norm_groups: int = Field(32, ge=1, le=128, description="most GroupNorm groups (fewer when a layer has fewer than 4 channels per group)")
    cross_attention: bool = Field(False, description="also cross-attend to tokens of the label embedding at the attention resolutions (class-conditional models)")
    context_tokens: int = Field(4, ge=1, le=64, description="label tokens for cross-attention")


def default_sizes(data_shape: tuple[int, ...]) -> dict:
    """Network sizes for an image shape (C, H, W), chosen so the default configs train on a
    2-core CPU (throughput measured in docs/benchmarks.md): one residual block per level and
    narrow levels, since at these sizes the number of training images seen matters more."""
    C, H, W = data_shape
    side = min(H, W)
    if side <= 16:  # MNIST 16x16: levels 16, 8, 4; about 1.1 M parameters
        return {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (4,)}
    if C == 1:  # gray 28 or 32: levels 28, 14, 7 (or 32, 16, 8); about 1.1 M parameters
        return {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (8, 7)}
    # RGB 32x32: levels 32, 16, 8, 4 with attention at 8 (and in the middle, at 4); about 1.5 M parameters
    return {"channels": 32, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 1, "attn_resolutions": (8,)}


def resolve_sizes(data_shape, channels, channel_mult, num_res_blocks, attn_resolutions, num_heads: int) -> dict:
    """The sizes of a U-Net for images of ``data_shape``: the options given, the rest from
    ``default_sizes``; checked (images only, heads dividing every level's channels)."""
    if len(data_shape) != 3:
        raise OptionsError(f"the unet needs images (C, H, W), not data of shape {tuple(data_shape)}; use the mlp for 2-D data.")
    sizes = default_sizes(tuple(data_shape))
    ch = channels or sizes["channels"]
    mult = tuple(channel_mult or sizes["channel_mult"])
    attn_res = set(sizes["attn_resolutions"] if attn_resolutions is None else attn_resolutions)
    for c in {ch * m for m in mult}:
        if c % num_heads:
            raise OptionsError(f"num_heads {num_heads} does not divide the {c} channels of a level; choose a divisor of {ch}.")
    return {"channels": ch, "channel_mult": mult, "num_res_blocks": num_res_blocks or sizes["num_res_blocks"],
            "attn_resolutions": tuple(sorted(attn_res))}


def _groups(channels: int, most: int) -> int:
    """The most groups (up to ``most``) that divide ``channels`` with at least 4 channels each."""
    g = max(1, min(most, channels // 4))
    while channels % g:
        g -= 1
    return g


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch, so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h + conv(dropout(SiLU(GN(conv(SiLU(GN(h))) + W emb))))  (DDPM appendix B)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out, groups), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.conv1(F.silu(self.norm1(h)))  # (B, c_out, H, W)
        z = z + self.emb(emb)[:, :, None, None]  # the time (and label) embedding, in every block
        z = self.conv2(self.drop(F.silu(self.norm2(z))))
        return self.skip(h) + z


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions; with ``context`` (B, K, D), cross-attention
    from the positions (queries) to the K context tokens (keys, values)."""

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        if context_dim is None:
            self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        else:
            self.q = nn.Conv2d(channels, channels, 1)
            self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = h.shape
        z = self.norm(h)
        if context is None:
            q, k, v = self.qkv(z).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)  # (B, heads, d, HW)
            k, v = k.transpose(-1, -2), v.transpose(-1, -2)  # (B, heads, HW, d)
        else:
            q = self.q(z).reshape(B, self.heads, C // self.heads, H * W)
            k, v = self.kv(context).reshape(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, heads, K, d)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k, v)  # softmax(q k^T / sqrt(d)) v, (B, heads, HW, d)
        return h + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Level(nn.Module):
    """The residual blocks of one resolution, each optionally followed by (cross-)attention."""

    def __init__(self, blocks: list[ResBlock], attn: list[nn.Module | None], cross: list[nn.Module | None]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(a if a is not None else nn.Identity() for a in attn)
        self.cross = nn.ModuleList(c if c is not None else nn.Identity() for c in cross)


def _apply(attn: nn.Module, h: torch.Tensor, context=None) -> torch.Tensor:
    if isinstance(attn, nn.Identity):
        return h
    return attn(h, context)


class UNet(nn.Module):
    """The DDPM U-Net for images, optionally class-conditional (sizes follow the image size).

    forward(x_t, t, y=None) -> eps (or x0, v) of x_t's shape, with out_mult times the channels
    when a variance is learned too; t is (B,), or (B, 2) when built with ``noise_inputs=2``.
    """

    Options = UNetOptions

    def __init__(
        self,
        channels: int | None = None,
        channel_mult: tuple[int, ...] | None = None,
        num_res_blocks: int | None = None,
        attn_resolutions: tuple[int, ...] | None = None,
        num_heads: int = 1,
        dropout: float = 0.0,
        norm_groups: int = 32,
        cross_attention: bool = False,
        context_tokens: int = 4,
        *,
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        out_mult: int = 1, noise_inputs: int = 1,
    ):
        super().__init__()
        self.sizes = resolve_sizes(data_shape, channels, channel_mult, num_res_blocks, attn_resolutions, num_heads)
        ch, mult, n_res = self.sizes["channels"], self.sizes["channel_mult"], self.sizes["num_res_blocks"]
        attn_res = set(self.sizes["attn_resolutions"])
        C, H, W = data_shape
        self.data_shape = tuple(data_shape)
        self.out_mult = out_mult
        self.num_classes = num_classes
        emb_dim = 4 * ch
        self.embed = TimeLabelEmbedding(ch, emb_dim, num_classes, noise_inputs)  # t (and y) -> (B, 4 ch)
        cross = cross_attention and num_classes > 0
        self.context = nn.Embedding(num_classes + 1, context_tokens * emb_dim) if cross else None
        self.context_tokens = context_tokens

        def attention(c: int, res: int):
            if res not in attn_res:
                return None, None
            return Attention(c, num_heads, norm_groups), (Attention(c, num_heads, norm_groups, emb_dim) if cross else None)

        self.conv_in = nn.Conv2d(C, ch, 3, padding=1)
        skips = [ch]
        c, res = ch, min(H, W)
        level_res = []  # the resolution of each level, for the up path's attention too
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, m in enumerate(mult):
            level_res.append(res)
            blocks, attns, crosses = [], [], []
            for _ in range(n_res):
                blocks.append(ResBlock(c, ch * m, emb_dim, dropout, norm_groups))
                c = ch * m
                a, x = attention(c, res)
                attns.append(a)
                crosses.append(x)
                skips.append(c)
            self.down.append(Level(blocks, attns, crosses))
            if i < len(mult) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                res = (res + 1) // 2
            else:
                self.downsample.append(nn.Identity())

        self.mid1 = ResBlock(c, c, emb_dim, dropout, norm_groups)
        self.mid_attn = Attention(c, num_heads, norm_groups)
        self.mid_cross = Attention(c, num_heads, norm_groups, emb_dim) if cross else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, dropout, norm_groups)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, m in reversed(list(enumerate(mult))):
            blocks, attns, crosses = [], [], []
            for _ in range(n_res + 1):
                blocks.append(ResBlock(c + skips.pop(), ch * m, emb_dim, dropout, norm_groups))
                c = ch * m
                a, x = attention(c, level_res[i])
                attns.append(a)
                crosses.append(x)
            self.up.append(Level(blocks, attns, crosses))
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity())

        self.norm_out = nn.GroupNorm(_groups(c, norm_groups), c)
        self.conv_out = _zero(nn.Conv2d(c, C * out_mult, 3, padding=1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        B = x_t.shape[0]
        if self.num_classes == 0:
            y = None
        elif y is None:
            y = torch.full((B,), self.num_classes, dtype=torch.long, device=t.device)  # the null label: unconditional
        emb = self.embed(t, y)  # (B, 4 ch)
        context = None
        if self.context is not None:
            context = self.context(y).reshape(B, self.context_tokens, -1)  # (B, K, 4 ch)

        h = self.conv_in(x_t)  # (B, ch, H, W)
        hs = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn, cross in zip(level.blocks, level.attn, level.cross):
                h = _apply(cross, _apply(attn, block(h, emb)), context)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)

        h = self.mid1(h, emb)
        h = _apply(self.mid_cross, self.mid_attn(h), context)
        h = self.mid2(h, emb)

        for level, up in zip(self.up, self.upsample):
            for block, attn, cross in zip(level.blocks, level.attn, level.cross):
                h = _apply(cross, _apply(attn, block(torch.cat([h, hs.pop()], dim=1), emb)), context)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))  # nearest x2, then conv3x3
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C * out_mult, H, W)
