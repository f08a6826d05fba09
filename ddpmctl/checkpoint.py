"""Checkpoints as safetensors, written atomically (outputs.atomic_write_bytes), verified on load. Nothing is pickled.

A checkpoint holds tensors under prefixes ``model/``, ``ema/``, ``optim/`` and ``rng/``,
and string metadata: the step, the config, the plugins and their versions, the ddpmctl
version, the optimiser's hyper-parameters and a SHA-256 of the tensor content.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ddpmctl import __version__
from ddpmctl.errors import CheckpointError
from ddpmctl.outputs import atomic_write_bytes

FORMAT = "ddpmctl-checkpoint/1"


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimiser state dict into tensors and JSON-able hyper-parameters."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        pid, key = name.split("/", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "ddpmctl_version": __version__,
        "content_sha256": content_hash(tensors),
        **{k: json.dumps(v) for k, v in meta.items()},
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def load(path: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint; a missing, truncated or corrupted file is named."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass one of the files in RUN/checkpoints/.")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({exc}); resume from an earlier one.") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ddpmctl checkpoint (format {raw.get('format')!r}); remove it, or restore the file `ddpmctl train` wrote.")
    if content_hash(tensors) != raw.get("content_sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted: its content hash does not match; resume from an earlier one.")
    meta = {k: (json.loads(v) if k not in ("format", "ddpmctl_version", "content_sha256") else v) for k, v in raw.items()}
    return tensors, meta


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
