"""The training loop. It receives built objects and knows none of their names.

    loss = loss_fn(net, x0, y, generator)     # DDPM Algorithm 1, or any other objective

AdamW with linear warm-up (and optional cosine decay), gradient-norm clipping, an EMA of the
weights, and hooks for logging, checkpoints and stopping. Batches and noise come from one
``torch.Generator`` whose state is checkpointed, so a resumed run continues the same stream.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ddpmctl import checkpoint
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

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything a resume needs, as tensors plus JSON-able metadata."""
        tensors = {f"model/{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        optim, optim_meta = checkpoint.optimizer_tensors(self.optimizer)
        tensors.update(optim)
        tensors["rng/generator"] = self.generator.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        return tensors, {"optimizer": optim_meta}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.net.load_state_dict(checkpoint.split(tensors, "model"))
        self.ema.load_state_dict(checkpoint.split(tensors, "ema"))
        self.optimizer.load_state_dict(checkpoint.optimizer_state(tensors, meta["optimizer"]))
        self.generator.set_state(tensors["rng/generator"])
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        self.step = int(meta["step"])


def make_state(net: torch.nn.Module, cfg: LoopConfig, device: torch.device, seed: int) -> TrainState:
    net = net.to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    # Fused AdamW on CUDA; on the CPU torch defaults to a per-tensor loop, foreach is faster.
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)
    generator = torch.Generator(device=device).manual_seed(seed)
    return TrainState(net, ema, optimizer, generator)


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
    N = x.shape[0]
    params = [p for p in net.parameters()]
    ema_params = [p for p in state.ema.parameters()]
    with torch.no_grad():  # buffers (fixed features, norm statistics) are copied, not averaged
        for be, bn in zip(state.ema.buffers(), net.buffers()):
            be.copy_(bn)
    check_every_step = x.device.type == "cpu"  # a host sync is free on the CPU
    loss_sum = torch.zeros((), device=x.device)
    grad_sum = torch.zeros((), device=x.device)
    since_log = 0
    net.train()
    while state.step < cfg.steps:
        step = state.step
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, N, (cfg.batch_size,), device=x.device, generator=g)
        loss = loss_fn(net, x[idx], None if y is None else y[idx], g)
        if check_every_step and not math.isfinite(loss.item()):
            raise NumericalError(
                f"the loss became {loss.item()} at step {step + 1}; lower the learning rate "
                f"(now {lr:.2e}) or the gradient clip, or train in float32; the last good checkpoint is kept."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        optimizer.step()
        # EMA warm-up: the effective decay grows from 0.1 towards ema_decay (as in many DDPM codes).
        update_ema(ema_params, params, min(cfg.ema_decay, (1 + step) / (10 + step)))
        state.step += 1
        loss_sum += loss.detach()
        grad_sum += grad_norm.detach()
        since_log += 1
        hooks.progress(state.step)

        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            mean_loss = (loss_sum / since_log).item()  # one host sync per log interval
            if not math.isfinite(mean_loss):
                raise NumericalError(
                    f"the loss became {mean_loss} between steps {state.step - since_log + 1} and {state.step}; "
                    f"lower the learning rate or train in float32; the last good checkpoint is kept."
                )
            hooks.log({"step": state.step, "loss": mean_loss, "grad_norm": (grad_sum / since_log).item(), "lr": lr})
            loss_sum.zero_()
            grad_sum.zero_()
            since_log = 0
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            hooks.checkpoint(state.step, {})
        if hooks.stop():
            if state.step % cfg.checkpoint_every != 0 and state.step != cfg.steps:
                hooks.checkpoint(state.step, {})
            return "interrupted"
    return "done"
