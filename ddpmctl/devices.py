"""Choosing the torch device, and its CPU threads, from a user's settings."""

from __future__ import annotations

import os

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


def cpu_count() -> int:
    """Cores this process may run on (its CPU affinity, which respects container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None, local_processes: int = 1) -> int:
    """Set torch's CPU threads for this process; returns the number in use.

    ``threads`` when given. Otherwise torch's own default (OMP_NUM_THREADS, else one thread per
    core) for a process alone on its machine, and the cores divided among the processes when a
    launch starts several on one machine: OpenMP threads of processes that share cores spin
    against each other (docs/benchmarks.md has the measurement). torchrun sets OMP_NUM_THREADS=1
    itself when it is unset, so under a multi-process launch a value of 1 is read as torchrun's
    default and replaced; pass ``threads`` (``--threads``) to insist on a number.
    """
    if threads is None and local_processes > 1 and os.environ.get("OMP_NUM_THREADS") in (None, "1"):
        threads = max(1, cpu_count() // local_processes)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def use_bf16(precision: str, device: torch.device, images: bool = True) -> bool:
    """Whether to autocast the network to bf16 in training: asked for, or ``auto`` for image
    networks on a CPU with AMX tiles, where oneDNN runs bf16 convolutions on them (1.4x the mnist16
    U-Net's fp32 training throughput, docs/benchmarks.md). Elsewhere auto keeps float32: on a CPU
    without bf16 instructions bf16 is far slower (30x for the mnist16 U-Net on AVX2); on an H200
    the default networks at batch 64 are bound by kernel launches, not arithmetic, and bf16's
    casts made training 0.82-0.91x as fast as float32 with TF32 (fast_math); and the 2-D MLPs
    stay float32 (their 2-D bars are measured in float32)."""
    if precision == "auto":
        return images and device.type == "cpu" and cpu_has_amx()
    return precision == "bf16"


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile instructions (Sapphire Rapids and later)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def fast_math(device: torch.device) -> None:
    """On CUDA: TF32 matrix products and convolutions, and cuDNN's autotuner (shapes are fixed)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def channels_last_pays(device: torch.device, training: bool) -> bool:
    """Whether an image network runs faster with NHWC (channels-last) weights. On the CPU the
    convolutions gain but torch's NHWC GroupNorm is 3-6x slower than its NCHW one, so training
    gained nothing and sampling 1.06x (mnist16 U-Net, benchmarks/speed.py --ablation): sampling
    only. On CUDA both: on an H200, NHWC sampled the mnist16 U-Net 1.14x faster and trained it at
    the same speed (0.99x; benchmarks/speed.py --ablation, docs/benchmarks.md)."""
    return device.type == "cuda" or not training


def memory_bytes() -> int:
    """This machine's physical memory (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(nbytes: float, what: str, fix: str) -> None:
    """Refuse, before allocating, work whose arrays alone would take more than half this machine's memory."""
    total = memory_bytes()
    if total and nbytes > total / 2:
        raise RunError(f"{what} needs {nbytes / 1e9:.3g} GB of memory, more than half of this machine's {total / 1e9:.0f} GB; {fix}.")

