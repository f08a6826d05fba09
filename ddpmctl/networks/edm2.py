"""The EDM2 U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models"), config G: a U-Net whose every layer preserves the magnitude of its activations.

    x_t (B, C, H, W) -> concat a constant channel of ones -> MPConv 3x3          (B, ch, H, W)
                     -> encoder: per level [down block (levels > 0), enc block x n]
                     -> decoder: lowest level [dec block + attention, dec block], others [up block],
                                 then dec block x (n + 1), each on MP-cat(h, skip)
                     -> MPConv 3x3 with a learned gain g_out (0 at the start) -> (B, C * out_mult, H, W)

EDM2 finds that the activations and weights of the ADM/EDM U-Net drift in magnitude as training
goes on, which moves the effective learning rate of each layer uncontrollably. Its config G
designs every layer to preserve magnitudes in expectation (for uncorrelated inputs), so that
unit-variance inputs keep the activations near unit variance throughout the network, at any point
of training:

- no biases, no GroupNorm (configs C, F): an encoder block pixel-normalises its input instead
  (each position's channel vector scaled to unit RMS), and the first convolution reads a constant
  channel of ones, which is all that is left of a bias;
- magnitude-preserving learned layers (config D): an MPConv (convolution or linear) divides each
  output channel's weights by their norm at every use, so a unit-variance input gives unit-variance
  outputs whatever the stored weights are;
- forced weight normalisation (config E): in training the stored weight itself is also put back
  on that sphere, ||w_i|| = sqrt(fan_in), before each use (under no_grad), so that the optimiser's
  step changes directions only and the effective learning rate stays the one that was set (not
  inside torch.func transforms, such as MeanFlow's jvp, which forbid it: see ``MPConv``);
- magnitude-preserving fixed-function layers (config G): MP-SiLU = SiLU(x) / 0.596 (0.596 is
  SiLU's RMS on N(0, 1)); MP-sum(a, b, t) = ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2), the residual
  connections with the residual branch weighted t = 0.3; MP-cat of the skip connections, which
  scales the two parts so that the result has unit RMS and each part weighs (1 - t) : t;
- cosine attention (config C): queries, keys and values pixel-normalised per head, so that the
  logits q.k / sqrt(d) = sqrt(d) cos(q, k) are bounded;
- the output: an MPConv with a learned scalar gain that starts at 0, so the untrained network
  outputs exactly 0 (``ddpmctl.testing.wake`` gives it a small random value for the tests);
- conditioning: the noise level through magnitude-preserving Fourier features and an MPConv, and
  the class as a one-hot vector (scaled to unit RMS) through an MPConv, MP-summed with t = 0.5 and
  passed through MP-SiLU; each block scales its residual branch channel-wise by
  1 + g_emb MPConv(emb), with a learned gain g_emb that starts at 0.

Residual block (enc: skip projection and pixel norm first; dec: skip projection at the end):

    x <- resample(x); enc: x <- PixelNorm(W_skip x)
    y <- W_1 MP-SiLU(x);  y <- MP-SiLU(y * (1 + g_emb W_emb emb));  y <- W_2 dropout(y)
    x <- MP-sum(x, y, 0.3);  with attention: x <- MP-sum(x, Attn(x), 0.3);  clip to +-256

Here the Fourier features of the noise level are the sinusoidal embedding of the U-Net and DiT
(``embeddings.timestep_embedding``, DDPM's frequencies for the network input in 0 .. 1000 that
every process passes), times sqrt(2): cos and sin pairs, so the feature vector has unit RMS for
every noise level, which is what EDM2's random-frequency features have on average. Index
``num_classes`` is the null label of classifier-free guidance. With ``noise_inputs=2`` the second
level's features go through their own MPConv with a gain that starts at 0 (named ``mlp2``, as the
U-Net's, so a distilled network starts from its teacher's weights as that teacher).

Left to the rest of ddpmctl: EDM2's preconditioning and loss are the ``edm`` process's; its
learning-rate decay, uncertainty-weighted loss and post-hoc EMA are not reproduced here. Weight
decay on the MPConv weights has no effect on what they compute (they are normalised) but does pull
the scalar gains towards 0; EDM2 trains without it.

Why not 2-D points: a point has no spatial layout to convolve, resample or attend over; use
``mlp``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ddpmctl.errors import OptionsError
from ddpmctl.networks.embeddings import timestep_embedding
from ddpmctl.registry import PluginOptions

# EDM2's balances (its defaults): the weight t of the second term of an MP-sum or MP-cat.
RES_BALANCE = 0.3  # residual branch against the main path
ATTN_BALANCE = 0.3  # attention against the main path
LABEL_BALANCE = 0.5  # class embedding against the noise embedding
CONCAT_BALANCE = 0.5  # skip connection against the decoder's path
CLIP_ACT = 256.0  # the blocks' outputs are clipped to +-CLIP_ACT (a guard for half precision)


class EDM2Options(PluginOptions):
    channels: int = Field(32, ge=4, le=1024, description="base channels: the first level's width")
    channel_mult: tuple[int, ...] = Field((1, 2, 2), min_length=1, max_length=6, description="channels per level, in multiples of `channels`; one level per entry, each halving the image")
    num_res_blocks: int = Field(1, ge=1, le=8, description="encoder blocks per level (the decoder has one more)")
    attn_resolutions: Optional[tuple[int, ...]] = Field(None, description="feature-map sizes (the shorter side, e.g. 4) whose blocks get cosine attention (default: the lowest level); the lowest level's first decoder block always has it")
    num_heads: int = Field(1, ge=1, le=32, description="attention heads (they split every level's channels)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the residual branch of every block")

    @model_validator(mode="after")
    def _heads_split(self):
        check_heads(self.channels, self.channel_mult, self.num_heads)  # refused before any data is loaded
        return self


def check_heads(channels: int, channel_mult: tuple[int, ...], num_heads: int) -> None:
    for c in sorted({channels * m for m in channel_mult}):
        if c % num_heads:
            raise OptionsError(f"num_heads {num_heads} does not divide the {c} channels of a level; choose a divisor of {channels}.")


def check_shape(data_shape: tuple[int, ...], levels: int) -> None:
    """Images (C, H, W) whose sides halve evenly once per level after the first."""
    if len(data_shape) == 1:
        raise OptionsError("edm2 is an image network; use mlp for 2-D points.")
    if len(data_shape) != 3:
        raise OptionsError(f"edm2 needs images (C, H, W), not data of shape {tuple(data_shape)}.")
    _, H, W = data_shape
    k = 2 ** (levels - 1)
    if H % k or W % k:
        raise OptionsError(f"the {H}x{W} image cannot be halved {levels - 1} times for the {levels} levels of channel_mult; give fewer levels or sides that are multiples of {k}.")


# -- Magnitude-preserving operations (EDM2 sec. 3 and appendix B) --------------------------------------


def normalize(x: torch.Tensor, dims: tuple[int, ...], eps: float = 1e-4) -> torch.Tensor:
    """x divided by its RMS over ``dims``: each slice gets unit mean square (pixel norm over the
    channels; weight normalisation over all but the output channel)."""
    rms = x.float().square().mean(dim=dims, keepdim=True).sqrt()
    return x / (eps + rms).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU scaled to keep unit variance: E[silu(z)^2] = 0.596^2 for z ~ N(0, 1)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1 - t) a + t b, rescaled so that two uncorrelated unit-variance inputs give unit variance."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """[a, b] along the channels, scaled so that unit-RMS parts give a unit-RMS whole in which a
    and b weigh (1 - t) : t whatever their channel counts Na and Nb."""
    Na, Nb = a.shape[1], b.shape[1]
    C = math.sqrt((Na + Nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (C * (1 - t) / math.sqrt(Na)), b * (C * t / math.sqrt(Nb))], dim=1)


def fourier_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """sqrt(2) [cos(t w_i), sin(t w_i)]: the U-Net's sinusoidal embedding of the noise input, with
    unit RMS for every t (cos^2 + sin^2 = 1). (B,) -> (B, dim), dim even."""
    return timestep_embedding(t, dim) * math.sqrt(2)


class MPConv(nn.Module):
    """A convolution (``kernel`` k: k x k) or a linear layer (``kernel`` 0) without bias whose
    weight is used as w_i / ||w_i|| per output channel i (times ``gain``): it maps unit-variance
    inputs to unit-variance outputs. In training the stored weight is also renormalised in place to
    ||w_i|| = sqrt(fan_in) before use (forced weight normalisation, EDM2 eq. 66).

    Not renormalised in place: in evaluation; under no_grad (a target computed without gradient:
    the weight the graph holds must not change before the backward pass); inside torch.func
    transforms (MeanFlow's jvp), which refuse in-place changes of a captured tensor. There the
    stored norm may drift as in EDM2's config D, but what the layer computes is the same."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 0):
        super().__init__()
        shape = (c_out, c_in, kernel, kernel) if kernel else (c_out, c_in)
        self.dims = tuple(range(1, len(shape)))
        self.weight = nn.Parameter(normalize(torch.randn(shape), self.dims))  # stored with unit-RMS rows

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
            with torch.no_grad():
                self.weight.copy_(normalize(self.weight, self.dims))  # forced weight normalisation
        fan_in = self.weight[0].numel()
        w = normalize(self.weight.float(), self.dims) * (gain / math.sqrt(fan_in))  # rows of norm |gain|
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class CosineAttention(nn.Module):
    """Self-attention over the H*W positions with q, k, v pixel-normalised per head (EDM2 sec. 2.3):
    softmax(sqrt(d) cos(q, k)) v, projected by an MPConv 1x1."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = MPConv(channels, 3 * channels, 1)
        self.proj = MPConv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(x).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = normalize(qkv, dims=(3,)).transpose(-1, -2).unbind(1)  # (B, heads, HW, d), unit RMS each
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Block(nn.Module):
    """An EDM2 encoder ("enc") or decoder ("dec") block (EDM2 fig. 21), optionally resampling
    ("down": 2x2 average, "up": nearest) first and with cosine attention after (``heads`` > 0)."""

    def __init__(self, c_in: int, c_out: int, c_emb: int, flavor: str, resample: str = "keep", heads: int = 0, dropout: float = 0.0):
        super().__init__()
        self.c_out, self.flavor, self.resample, self.dropout = c_out, flavor, resample, dropout
        self.emb_gain = nn.Parameter(torch.zeros(()))  # the embedding starts without effect
        self.conv_res0 = MPConv(c_out if flavor == "enc" else c_in, c_out, 3)
        self.emb_linear = MPConv(c_emb, c_out)
        self.conv_res1 = MPConv(c_out, c_out, 3)
        self.conv_skip = MPConv(c_in, c_out, 1) if c_in != c_out else None
        self.attn = CosineAttention(c_out, heads) if heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Main path.
        if self.resample == "down":
            x = F.avg_pool2d(x, 2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dims=(1,))  # pixel norm
        # Residual branch, scaled channel-wise by the embedding.
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1  # (B, c_out)
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        y = self.conv_res1(F.dropout(y, self.dropout, self.training))
        # Join the branches, then attend.
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, RES_BALANCE)
        if self.attn is not None:
            x = mp_sum(x, self.attn(x), ATTN_BALANCE)
        return x.clamp(-CLIP_ACT, CLIP_ACT)


class GapEmbedding(nn.Module):
    """The second noise input's features -> MPConv, times a gain that starts at 0."""

    def __init__(self, c_noise: int, c_emb: int):
        super().__init__()
        self.linear = MPConv(c_noise, c_emb)
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features, gain=self.gain)


class Embedding(nn.Module):
    """emb = MP-SiLU(MP-sum(W_noise f(t), W_label sqrt(K + 1) onehot(y), 0.5)), K = num_classes
    (index K: the null label); with ``noise_inputs=2`` t is (B, 2) and the second level adds
    g W_2 f(t_2) to the noise term, g = 0 at the start."""

    def __init__(self, c_noise: int, c_emb: int, num_classes: int, noise_inputs: int):
        super().__init__()
        if noise_inputs not in (1, 2):
            raise ValueError(f"noise_inputs must be 1 or 2, got {noise_inputs}")
        self.c_noise, self.num_classes = c_noise, num_classes
        self.noise = MPConv(c_noise, c_emb)
        self.mlp2 = GapEmbedding(c_noise, c_emb) if noise_inputs == 2 else None  # the name pipeline.start_from expects
        self.label = MPConv(num_classes + 1, c_emb) if num_classes > 0 else None

    def forward(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.mlp2 is not None:
            emb = self.noise(fourier_features(t[:, 0], self.c_noise)) + self.mlp2(fourier_features(t[:, 1], self.c_noise))
        else:
            emb = self.noise(fourier_features(t, self.c_noise))  # (B, c_emb)
        if self.label is not None:
            if y is None:  # no label given: the null (unconditional) label
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            onehot = F.one_hot(y, self.num_classes + 1).to(emb.dtype) * math.sqrt(self.num_classes + 1)  # unit RMS
            emb = mp_sum(emb, self.label(onehot), LABEL_BALANCE)
        return mp_silu(emb)


def build_encoder(widths: list[int], c_emb: int, sides: list[int], n: int, attn: set[int], heads: int, dropout: float) -> nn.ModuleList:
    """Per level: a down block (levels after the first), then n blocks to the level's width."""
    blocks, c = [], widths[0]
    for level, width in enumerate(widths):
        if level > 0:
            blocks.append(Block(c, c, c_emb, "enc", "down", dropout=dropout))
        for _ in range(n):
            blocks.append(Block(c, width, c_emb, "enc", heads=heads if sides[level] in attn else 0, dropout=dropout))
            c = width
    return nn.ModuleList(blocks)


def build_decoder(widths: list[int], c_emb: int, sides: list[int], n: int, attn: set[int], heads: int, dropout: float,
                  skips: list[int]) -> tuple[nn.ModuleList, list[bool]]:
    """Per level, lowest first: two blocks (the first with attention) at the lowest level, an up
    block at the others, then n + 1 blocks that each read one skip (popped from ``skips``).
    -> (blocks, whether each block reads a skip)."""
    blocks, reads_skip, c = [], [], widths[-1]
    for level in reversed(range(len(widths))):
        if level == len(widths) - 1:
            first = [Block(c, c, c_emb, "dec", heads=heads, dropout=dropout), Block(c, c, c_emb, "dec", dropout=dropout)]
        else:
            first = [Block(c, c, c_emb, "dec", "up", dropout=dropout)]
        blocks += first
        reads_skip += [False] * len(first)
        for _ in range(n + 1):
            width = widths[level]
            blocks.append(Block(c + skips.pop(), width, c_emb, "dec", heads=heads if sides[level] in attn else 0, dropout=dropout))
            reads_skip.append(True)
            c = width
    return nn.ModuleList(blocks), reads_skip


class EDM2UNet(nn.Module):
    """The EDM2 magnitude-preserving U-Net (config G) for images, optionally class-conditional.

    forward(x_t, t, y=None) -> eps (or x0, v, F) of x_t's shape, with out_mult times the channels
    when a variance is learned too; t is (B,), or (B, 2) when built with ``noise_inputs=2``.
    """

    Options = EDM2Options

    def __init__(
        self,
        channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] | None = None,
        num_heads: int = 1,
        dropout: float = 0.0,
        *,
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        out_mult: int = 1,
        noise_inputs: int = 1,
    ):
        super().__init__()
        check_shape(tuple(data_shape), len(channel_mult))
        check_heads(channels, tuple(channel_mult), num_heads)
        C, H, W = data_shape
        self.data_shape, self.num_classes, self.out_mult = tuple(data_shape), num_classes, out_mult
        widths = [channels * m for m in channel_mult]
        sides = [min(H, W) >> level for level in range(len(widths))]
        attn = set(sides[-1:] if attn_resolutions is None else attn_resolutions)
        c_emb = max(widths)
        self.embed = Embedding(channels + channels % 2, c_emb, num_classes, noise_inputs)  # an even number of Fourier features
        self.conv_in = MPConv(C + 1, widths[0], 3)  # the image and a constant channel
        self.enc = build_encoder(widths, c_emb, sides, num_res_blocks, attn, num_heads, dropout)
        skips = [widths[0], *(block.c_out for block in self.enc)]  # every encoder output is a skip
        self.dec, self.reads_skip = build_decoder(widths, c_emb, sides, num_res_blocks, attn, num_heads, dropout, skips)
        self.conv_out = MPConv(widths[0], C * out_mult, 3)
        self.out_gain = nn.Parameter(torch.zeros(()))  # the untrained network outputs 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, y if self.num_classes else None)  # (B, c_emb); y = None: the null label
        h = self.conv_in(torch.cat([x_t, torch.ones_like(x_t[:, :1])], dim=1))  # (B, ch, H, W)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block, reads_skip in zip(self.dec, self.reads_skip):
            if reads_skip:
                h = mp_cat(h, skips.pop(), CONCAT_BALANCE)
            h = block(h, emb)
        return self.conv_out(h, gain=self.out_gain)  # (B, C * out_mult, H, W)
