"""Choosing the torch device from a user's setting."""

from __future__ import annotations

import torch

from ddpmctl.errors import RunError


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA when present, else the CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
