"""Example ddpmctl plugin: Euler-Maruyama sampling of the reverse VP SDE, and a quadratic schedule."""

__version__ = "0.1.0"
