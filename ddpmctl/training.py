"""The training loop. It receives built objects and knows none of their names.

    loss = loss_fn(net, x0, y, generator)     # DDPM Algorithm 1, or any other objective
    loss_fn.set_step(step)                     # before each step, when the loss has a curriculum

AdamW with linear warm-up (and optional cosine decay), gradient-norm clipping, an EMA of the
weights, and hooks for logging, checkpoints and stopping. Batches and noise come from one
``torch.Generator`` whose state is checkpointed, so a resumed run continues the same stream.

Under torch.distributed (torchrun) each process runs this loop on its share of the batch with
the network wrapped in DistributedDataParallel; each has its own generator stream, the logged
loss is the mean over processes, and a stop seen by any process stops all of them at one step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ddpmctl import checkpoint, distributed
from ddpmctl.errors import NumericalError


@dataclass
class LoopConfig:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 200
    lr_decay: str = "cosine"
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_every: int = 1000
    skip_nonfinite: bool = False  # skip a step whose loss or gradient is NaN/inf instead of stopping
    max_skipped_in_a_row: int = 20
    bf16: bool = False  # bf16 autocast of the loss (network forward); the weights and optimizer stay float32


@dataclass
class Hooks:
    """Callbacks of the loop. ``stop`` is polled every iteration (set by a signal handler)."""

    log: Callable[[dict], None] = lambda record: None
    checkpoint: Callable[[int, dict], None] = lambda step, tensors: None
    progress: Callable[[int], None] = lambda step: None
    stop: Callable[[], bool] = lambda: False


@dataclass
class TrainState:
    net: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    extra: dict = field(default_factory=dict)
    # What the loss calls: ``net`` itself, or ``net`` wrapped (DistributedDataParallel,
    # torch.compile); it shares net's parameters. None: net.
    model: Optional[torch.nn.Module] = None
    seed: int = 0
    rank: int = 0  # this process's rank under torch.distributed

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything a resume needs, as tensors plus JSON-able metadata. Under torch.distributed
        every process must call it (the generator states of all ranks are gathered)."""
        tensors = {f"model/{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        optim, optim_meta = checkpoint.optimizer_tensors(self.optimizer)
        tensors.update(optim)
        for key, states in (("generator", distributed.gather_states(self.generator.get_state())),
                            ("torch", distributed.gather_states(torch.get_rng_state()))):
            tensors[f"rng/{key}"] = states[0]  # rank 0's: what a one-process resume continues
            tensors.update({f"rng/{key}.rank{r}": st for r, st in enumerate(states) if r > 0})
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        return tensors, {"optimizer": optim_meta}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> list[str]:
        """Put the saved state back; returns notes for the user, one sentence each (a stream that could not go on)."""
        self.net.load_state_dict(checkpoint.split(tensors, "model"))
        self.ema.load_state_dict(checkpoint.split(tensors, "ema"))
        self.optimizer.load_state_dict(checkpoint.optimizer_state(tensors, meta["optimizer"]))
        match_layout(self.optimizer)
        self.step = int(meta["step"])
        suffix = f".rank{self.rank}" if self.rank else ""
        saved = tensors.get(f"rng/generator{suffix}")
        notes = []
        if saved is not None and saved.numel() == self.generator.get_state().numel():  # the same rank, on the same kind of device
            self.generator.set_state(saved)
            torch.set_rng_state(tensors[f"rng/torch{suffix}"])
        else:  # a rank the saving run did not have, or a run moved between CPU and GPU (Mersenne Twister and Philox
            # states cannot stand for each other): a fresh stream of its own from the seed, rank and step
            if saved is not None:
                notes.append(f"the checkpoint's random stream was drawn on another kind of device than {self.generator.device.type}; "
                             "it restarts from the seed and step, so the run goes on but will not match an uninterrupted one bit for bit.")
            torch.manual_seed(stream_seed(self.seed, self.rank, self.step))
            self.generator.manual_seed(stream_seed(self.seed, self.rank, self.step))
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        return notes


def stream_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of a process's batches and noise: ``seed`` itself for rank 0 at the start (a
    one-process run), distinct for every other (rank, step at which the stream starts)."""
    if rank == 0 and step == 0:
        return seed
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729 + 1) % (2**63)


def match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimiser moment its parameter's memory layout. Checkpoints store tensors
    contiguous (NCHW) while a channels-last network's parameters are NHWC, and CUDA's fused AdamW
    refuses moments whose strides differ from their parameter's (a resumed image run on a GPU)."""
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def make_state(
    net: torch.nn.Module,
    cfg: LoopConfig,
    device: torch.device,
    seed: int,
    channels_last: bool = False,
    compile: bool = False,
) -> TrainState:
    """Optimizer, EMA and generator for ``net`` on ``device``. ``channels_last`` stores the
    image network's weights NHWC (faster convolutions); ``compile`` runs it through torch.compile;
    under torch.distributed the network is wrapped in DistributedDataParallel."""
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    # Fused AdamW on CUDA; on the CPU torch defaults to a per-tensor loop, foreach is faster.
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)
    rank = torch.distributed.get_rank() if distributed.active() else 0
    generator = torch.Generator(device=device).manual_seed(stream_seed(seed, rank))
    model = net
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(stream_seed(seed, rank))  # dropout masks differ between ranks; the weights were built alike
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        model = torch.compile(model)
    return TrainState(net, ema, optimizer, generator, model=model, seed=seed, rank=rank)


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up to cfg.lr, then constant or cosine decay to 10% of it."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_decay == "cosine":
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    return cfg.lr


@torch.no_grad()
def update_ema(ema_params: list, params: list, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, one foreach op over all parameters."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def _nonfinite(loss: torch.Tensor, grad_norm: torch.Tensor, step: int, lr: float) -> str:
    """What became NaN/inf at ``step`` (0-based), and what to do about it."""
    what = (f"the loss became {loss.item()}" if not math.isfinite(loss.item())
            else f"the gradient norm became {grad_norm.item()} (the loss was {loss.item():.4g})")
    return (f"{what} at step {step + 1}; lower the learning rate (now {lr:.2e}) or the gradient clip, or train in "
            f"float32 (or pass --on-nonfinite skip); the last good checkpoint is kept.")


def _log_interval(step: int, loss_sum: torch.Tensor, grad_sum: torch.Tensor, since_log: int, lr: float, hooks: Hooks) -> None:
    """The loss record of the last ``since_log`` steps (their mean over processes), then reset the sums."""
    mean_loss = distributed.mean_over_ranks(loss_sum / since_log).item()  # one host sync per log interval
    if not math.isfinite(mean_loss):
        raise NumericalError(
            f"the loss became {mean_loss} between steps {step - since_log + 1} and {step}; "
            f"lower the learning rate or train in float32; the last good checkpoint is kept."
        )
    hooks.log({"step": step, "loss": mean_loss, "grad_norm": (grad_sum / since_log).item(), "lr": lr})
    loss_sum.zero_()
    grad_sum.zero_()


def train(
    state: TrainState,
    loss_fn,
    x: torch.Tensor,
    y: Optional[torch.Tensor],
    cfg: LoopConfig,
    hooks: Hooks = Hooks(),
) -> str:
    """Run from ``state.step`` to ``cfg.steps``; returns why it stopped ("done" or "interrupted").

    ``x`` (and ``y``) are the whole dataset, already on the training device.
    """
    net, optimizer, g = state.net, state.optimizer, state.generator
    model = state.model if state.model is not None else net
    curriculum = getattr(loss_fn, "set_step", None)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    # A stop request is agreed among processes every step on the CPU, every 10 on CUDA (a host sync).
    sync_every = 10 if distributed.active() and x.device.type != "cpu" else 1
    stop_seen, N = False, x.shape[0]
    params = list(net.parameters())
    ema_params = list(state.ema.parameters())
    with torch.no_grad():  # buffers (fixed features, norm statistics) are copied, not averaged
        for be, bn in zip(state.ema.buffers(), net.buffers()):
            be.copy_(bn)
    check_every_step = x.device.type == "cpu"  # a host sync is free on the CPU
    loss_sum = torch.zeros((), device=x.device)
    grad_sum = torch.zeros((), device=x.device)
    since_log = 0
    skipped, in_a_row = 0, 0
    model.train()  # (and net, which it wraps)
    while state.step < cfg.steps:
        step = state.step
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, N, (cfg.batch_size,), device=x.device, generator=g)
        if curriculum is not None:  # a loss that changes over training (methods.py) is told the step
            curriculum(step)
        with autocast:
            loss = loss_fn(model, x[idx], None if y is None else y[idx], g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        # One host sync a step where it is free (the CPU) or asked for (skipping); agreed by all processes.
        if (check_every_step or cfg.skip_nonfinite) and distributed.any_rank(not torch.isfinite(loss.detach() + grad_norm).item()):
            if not cfg.skip_nonfinite:
                raise NumericalError(_nonfinite(loss, grad_norm, step, lr))
            # The batch is spent; weights, optimizer state and EMA stay as they were.
            skipped += 1
            in_a_row += 1
            if in_a_row > cfg.max_skipped_in_a_row:
                raise NumericalError(
                    f"the loss or gradient was NaN/inf for {in_a_row} steps in a row (up to step {step + 1}); "
                    f"lower the learning rate (now {lr:.2e}) or train in float32; the last good checkpoint is kept."
                )
            optimizer.zero_grad(set_to_none=True)
            hooks.log({"step": step + 1, "event": "skipped", "reason": "non-finite loss or gradient", "skipped_total": skipped})
        else:
            in_a_row = 0
            optimizer.step()
            # EMA warm-up: the effective decay grows from 0.1 towards ema_decay (as in many DDPM codes).
            update_ema(ema_params, params, min(cfg.ema_decay, (1 + step) / (10 + step)))
            loss_sum += loss.detach()
            grad_sum += grad_norm.detach()
            since_log += 1
        state.step += 1
        hooks.progress(state.step)

        if (state.step % cfg.log_every == 0 or state.step == cfg.steps) and since_log:
            _log_interval(state.step, loss_sum, grad_sum, since_log, lr, hooks)
            since_log = 0
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            hooks.checkpoint(state.step, {})
        stop_seen = stop_seen or hooks.stop()
        if (state.step % sync_every == 0 or state.step == cfg.steps) and distributed.any_rank(stop_seen):
            if state.step % cfg.checkpoint_every != 0 and state.step != cfg.steps:
                hooks.checkpoint(state.step, {})
            return "interrupted"
    return "done"
