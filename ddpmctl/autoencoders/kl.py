"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "KL-f4/f8").

    encode:  x (B, C, H, W) -> conv_in -> [ResBlock x n -> Downsample] per level, none after the last
                            -> middle: ResBlock, (attention), ResBlock
                            -> GroupNorm, SiLU, conv3x3 -> (B, 2 z, H/f, W/f) = (mean, logvar)
    sample:  z = mean + exp(logvar / 2) * noise                      (reparameterisation)
    decode:  z (B, z, H/f, W/f) -> conv_in -> middle: ResBlock, (attention), ResBlock
                            -> [ResBlock x n -> Upsample] per level, in reverse, none after the last
                            -> GroupNorm, SiLU, conv_out -> x_hat (B, C, H, W)

Every residual block is GroupNorm -> SiLU -> conv3x3, twice, plus the input (through a 1x1
convolution when the channel count changes). A level downsamples with a stride-2 conv3x3 and
upsamples with nearest 2x followed by a conv3x3, so f = 2 ** (len(channel_mult) - 1): the
default (1, 2, 2) maps 32x32x3 images to 8x8x4 latents (f4). The encoder's last conv gives the
mean and log-variance of a diagonal Gaussian q(z | x) together (LDM's ``double_z``); the
log-variance is clamped to [-30, 20] as in LDM. The KL term to N(0, I) is ``kl_divergence``.

Unlike LDM, the decoder has ``num_res_blocks`` blocks per level (not one more), and the 1x1
``quant_conv``/``post_quant_conv`` are left out: each sits next to a convolution and adds
nothing it could not learn. The output is not squashed (LDM's is not either); images are
expected in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from ddpmctl.errors import OptionsError
from ddpmctl.registry import PluginOptions

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # LDM's clamp of the encoder's log-variance


class KLOptions(PluginOptions):
    channels: int = Field(32, ge=4, le=512, description="base channels")
    channel_mult: tuple[PositiveInt, ...] = Field((1, 2, 2), min_length=1, max_length=6, description="channels per level, in multiples of `channels`; one level per entry, and len - 1 downsamplings, so f = 2 ** (len - 1) (default: f4)")
    num_res_blocks: int = Field(1, ge=1, le=4, description="residual blocks per level, in the encoder and in the decoder")
    latent_channels: int = Field(4, ge=1, le=64, description="channels of the latent z")
    attention: bool = Field(False, description="one self-attention block in the middle of the encoder and of the decoder (LDM has it)")
    norm_groups: int = Field(8, ge=1, le=128, description="most GroupNorm groups (fewer when they do not divide a layer's channels)")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over the latent dimensions:
    0.5 * sum(mean^2 + var - 1 - logvar); (B, ...) -> (B,)."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def _groups(channels: int, most: int) -> int:
    """The most groups, up to ``most``, that divide ``channels``."""
    g = min(most, channels)
    while channels % g:
        g -= 1
    return g


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels, groups), channels)


class ResBlock(nn.Module):
    """h + conv(SiLU(GN(conv(SiLU(GN(h))))))  (no time embedding: the autoencoder sees clean images)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.conv1(F.silu(self.norm1(h)))  # (B, c_out, H, W)
        z = self.conv2(F.silu(self.norm2(z)))
        return self.skip(h) + z


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, added to its input."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # (B, HW, C) each
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v, (B, HW, C)
        return h + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


def _middle(c: int, attention: bool, groups: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(c, c, groups), Attention(c, groups) if attention else nn.Identity(), ResBlock(c, c, groups))


class Encoder(nn.Module):
    """x (B, C, H, W) -> (B, 2 z, H/f, W/f): the mean and log-variance of q(z | x), unclamped."""

    def __init__(self, in_channels: int, channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                 latent_channels: int, attention: bool, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        layers: list[nn.Module] = []
        c = channels
        for i, m in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, channels * m, groups))
                c = channels * m
            if i < len(channel_mult) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # (H, W) -> (H/2, W/2)
        self.down = nn.Sequential(*layers)
        self.middle = _middle(c, attention, groups)
        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.conv_in(x))  # (B, ch * mult[-1], H/f, W/f)
        h = self.middle(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 z, H/f, W/f)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, c, 2H, 2W)


class Decoder(nn.Module):
    """z (B, z, H/f, W/f) -> x_hat (B, C, H, W): the encoder's levels in reverse."""

    def __init__(self, out_channels: int, channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                 latent_channels: int, attention: bool, groups: int):
        super().__init__()
        c = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(latent_channels, c, 3, padding=1)
        self.middle = _middle(c, attention, groups)
        layers: list[nn.Module] = []
        for i, m in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, channels * m, groups))
                c = channels * m
            if i > 0:
                layers.append(Upsample(c))
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.conv_in(z))  # (B, ch * mult[-1], H/f, W/f)
        h = self.up(h)  # (B, ch * mult[0], H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)


def check_shape(data_shape: tuple[int, ...], factor: int, levels: int) -> None:
    """Refuse data the autoencoder cannot take: anything but images, or sides that f does not divide."""
    if len(data_shape) != 3:
        raise OptionsError(f"the kl autoencoder needs images (C, H, W), not data of shape {tuple(data_shape)}; use an image dataset, since 2-D points need no autoencoder.")
    _, H, W = data_shape
    if H % factor or W % factor:
        raise OptionsError(
            f"the kl autoencoder downsamples by f = {factor} ({levels} levels in channel_mult), which does not divide "
            f"the image size {H}x{W}; use a shorter channel_mult or images whose sides are multiples of {factor}."
        )


class KLAutoencoder(nn.Module):
    """The KL-regularised convolutional autoencoder of latent diffusion (LDM's AutoencoderKL).

    encode(x) -> (mean, logvar) of shape (B, *latent_shape); decode(z) -> (B, *data_shape);
    forward(x, noise) -> (reconstruction, kl (B,)) with z = mean + exp(logvar / 2) * noise.
    """

    Options = KLOptions

    def __init__(
        self,
        channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        latent_channels: int = 4,
        attention: bool = False,
        norm_groups: int = 8,
        *,
        data_shape: tuple[int, ...],
    ):
        super().__init__()
        mult = tuple(channel_mult)
        self.factor = 2 ** (len(mult) - 1)
        check_shape(tuple(data_shape), self.factor, len(mult))
        C, H, W = data_shape
        self.data_shape = tuple(data_shape)
        self.latent_shape = (latent_channels, H // self.factor, W // self.factor)
        sizes = (channels, mult, num_res_blocks, latent_channels, attention, norm_groups)
        self.encoder = Encoder(C, *sizes)
        self.decoder = Decoder(C, *sizes)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and (clamped) log-variance of q(z | x), each (B, *latent_shape)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, z, H/f, W/f) each
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction of latents z (B, *latent_shape), (B, *data_shape); not squashed."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction (B, *data_shape), KL to N(0, I) (B,)) for one draw z ~ q(z | x);
        ``noise`` is standard normal of the latent shape, drawn by the caller."""
        mean, logvar = self.encode(x)
        if noise.shape != mean.shape:
            raise ValueError(f"noise must have the latents' shape {tuple(mean.shape)}, not {tuple(noise.shape)}")
        z = mean + (0.5 * logvar).exp() * noise  # reparameterisation: z ~ N(mean, exp(logvar))
        return self.decode(z), kl_divergence(mean, logvar)
