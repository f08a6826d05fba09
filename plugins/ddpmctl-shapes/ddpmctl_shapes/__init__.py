"""Example ddpmctl plugin: the `glyph` 2-D dataset and the `fourier-mlp` network."""

__version__ = "0.1.0"
