"""A 2-D distribution from an image: points drawn with density proportional to the ink of a
word rendered with Pillow's built-in font, then jittered uniformly within each pixel."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field

from ddpmctl.datasets.base import Dataset
from ddpmctl.registry import PluginOptions, with_options


class GlyphOptions(PluginOptions):
    text: str = Field("DDPM", min_length=1, max_length=12, description="the word whose ink is the density")
    n: int = Field(100_000, ge=1, le=10_000_000, description="number of training points")
    seed: int = Field(0, ge=0, description="seed of the training draw")
    width: float = Field(4.5, gt=0, description="width of the word in data units (centred at 0)")


def ink(text: str) -> np.ndarray:
    """Grayscale ink of ``text`` (rows top to bottom), values in [0, 1]."""
    font = ImageFont.load_default(size=48)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(img).text((4 - left, 4 - top), text, fill=255, font=font)
    return np.asarray(img, dtype=np.float64) / 255.0


@with_options(GlyphOptions)
def glyph(text="DDPM", n=100_000, seed=0, width=4.5) -> Dataset:
    """Points whose density is the ink of a rendered word."""
    density = ink(text)
    H, W = density.shape
    p = torch.from_numpy(density.reshape(-1) / density.sum())
    scale = width / W

    def draw(m: int, s: int):
        g = torch.Generator().manual_seed(s)
        idx = torch.multinomial(p, m, replacement=True, generator=g)
        row, col = idx // W, idx % W
        u = torch.rand(m, 2, generator=g, dtype=torch.float64)
        x = (col + u[:, 0] - W / 2) * scale
        y = (H / 2 - row - u[:, 1]) * scale  # image rows grow downwards
        return torch.stack([x, y], 1).float(), None

    return Dataset("glyph", draw(n, seed)[0], fresh_fn=lambda m, s: draw(m, 1_000_003 + s), info={"text": text})
