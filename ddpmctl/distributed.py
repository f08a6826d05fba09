"""Data-parallel training on torch.distributed, as torchrun launches it.

    torchrun --nproc_per_node N -m ddpmctl train ...

torchrun gives every process RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (and the
rendezvous address). Each process trains a replica of the network on batch_size / WORLD_SIZE
examples; DistributedDataParallel averages the gradients, so a step is the step of one process
on the whole batch. Rank 0 alone writes (run directory, checkpoints, metrics, grids) and draws
the progress bar. Collectives here move tensors only; nothing is pickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ddpmctl.errors import ConfigError, RunError

# How long a rank waits for the others at a collective: rank 0 alone draws sample grids and runs
# --eval-every evaluations (minutes for FID on a CPU) while the others wait at the next step.
WAIT = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes, ``local_size`` on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env=None) -> World:
    """The torchrun variables, or one process when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers; launch with torchrun, which sets them.") from None
    if not (size >= 1 and 0 <= rank < size and 0 <= local_rank < local_size <= size):
        raise ConfigError(f"inconsistent launch variables (RANK {rank}, WORLD_SIZE {size}, LOCAL_RANK {local_rank}, LOCAL_WORLD_SIZE {local_size}); launch with torchrun.")
    return World(rank, size, local_rank, local_size)


def rank_batch(batch_size: int, world: World) -> int:
    """Examples each process draws: the global batch split evenly among the processes."""
    if batch_size % world.size:
        raise ConfigError(
            f"the batch size {batch_size} cannot be split evenly among {world.size} processes; "
            f"choose a multiple of {world.size} (it is the global batch, each process draws batch_size / {world.size})."
        )
    return batch_size // world.size


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); returns this process's device
    (cuda:LOCAL_RANK on CUDA). One process: nothing to join, the device as given."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RunError(f"local rank {world.local_rank} has no GPU ({torch.cuda.device_count()} visible); start at most that many processes per node.")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=WAIT,
                                    device_id=device if device.type == "cuda" else None)
        except ValueError as exc:  # env:// rendezvous without MASTER_ADDR / MASTER_PORT
            raise RunError(f"cannot join the process group ({str(exc).splitlines()[0]}); launch with torchrun.") from None
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    """Where collectives want their tensors: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_text(text: str | None) -> str:
    """Rank 0's ``text`` on every rank (a run directory chosen by rank 0, for instance)."""
    if not active():
        return text or ""
    dev = _device()
    data = torch.frombuffer(bytearray((text or "").encode()), dtype=torch.uint8) if text else torch.zeros(0, dtype=torch.uint8)
    n = torch.tensor([data.numel()], dtype=torch.long, device=dev)
    dist.broadcast(n, 0)
    buf = data.to(dev) if dist.get_rank() == 0 else torch.empty(int(n), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (a stop request seen by one process)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the processes (a copy; ``t`` is untouched)."""
    if not active():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def gather_states(state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's uint8 ``state`` (generator states, all of one size), in rank order."""
    if not active():
        return [state]
    dev = _device()
    parts = [torch.empty_like(state, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, state.to(dev))
    return [p.cpu() for p in parts]


def barrier() -> None:
    if active():
        dist.barrier()
