"""Training and sampling throughput of the default networks, optionally against diffusers.

    ours:   ddpmctl's own training loop (training.train: DDPM Algorithm 1, AdamW, gradient clip,
            EMA) and its ancestral sampler (pipeline.sample with ddpm), as `ddpmctl train` and
            `ddpmctl sample` run them (channels-last where it pays, optional torch.compile).
    theirs: diffusers' UNet2DModel with the same levels, channels, blocks and attention
            resolutions (parameter counts printed, and required to match within 10%), trained
            by the step of diffusers' examples/unconditional_image_generation/train_unconditional.py
            (DDPMScheduler.add_noise, UNet2DModel(...).sample, MSE on eps, backward, gradient
            clip 1.0, torch AdamW, EMAModel), sampled by the DDPMPipeline loop
            (DDPMScheduler.step after each UNet2DModel call).

Both sides draw the same batch size from synthetic data of the same shape (speed does not
depend on the pixels) and run under the same precision. Repeats are interleaved, ours then
theirs, so a load on the machine slows both alike; a ratio is the median of the per-repeat
ratios. Nothing here prints; ``tick(description)`` reports progress.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ddpmctl.config import PHASE_DEFAULTS, TrainSettings, saved
from ddpmctl.datasets.base import Dataset
from ddpmctl.devices import channels_last_pays, fast_math, use_bf16
from ddpmctl.errors import ConfigError, OptionsError
from ddpmctl.networks.unet import _groups, default_sizes
from ddpmctl.pipeline import Model, build_network, build_process, sample
from ddpmctl.record import DataInfo, RunRecord
from ddpmctl.session import loop_config, objective
from ddpmctl.training import lr_at, make_state, train

# The default model of each phase: data shape, network plugin, batch size.
MODELS = {
    "2d": {"shape": (2,), "network": "mlp", "batch_size": PHASE_DEFAULTS["points"]["batch_size"], "kind": "points"},
    "mnist16": {"shape": (1, 16, 16), "network": "unet", "batch_size": PHASE_DEFAULTS["images"]["batch_size"], "kind": "images"},
    "rgb32": {"shape": (3, 32, 32), "network": "unet", "batch_size": PHASE_DEFAULTS["images"]["batch_size"], "kind": "images"},
    # The transformer denoiser at its defaults on phase 2's shape (docs/architectures.md)
    "mnist16-dit": {"shape": (1, 16, 16), "network": "dit", "batch_size": PHASE_DEFAULTS["images"]["batch_size"], "kind": "images"},
}
T = 1000  # training timesteps of the linear schedule, as the defaults train


@dataclasses.dataclass
class Settings:
    train_steps: int = 20  # timed training steps per repeat
    nfe: int = 1000  # network evaluations per timed sampling run
    repeats: int = 3
    batch_size: Optional[int] = None  # None: the model's training default, for training and sampling
    compile: bool = False  # torch.compile ours (training and sampling)
    precision: str = "auto"
    vs: Optional[str] = None  # "diffusers"
    warmup_steps: int = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_step_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor memory allocated while ``fn`` runs, beyond what was allocated before it
    (activations, gradients, temporaries): CUDA's allocator statistics, or on the CPU the
    running sum of the profiler's per-operator allocations."""
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # the profiler's own log lines are not for the user
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 for a moment: torch's allocator warns in C++, straight to stderr,
    when a block made before profiling is freed during it, which is expected here."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Ours:
    """ddpmctl's network, training loop and ancestral sampler, built from settings by the same
    functions as `ddpmctl train` (session.loop_config, session.objective) on synthetic data."""

    name = "ddpmctl"

    def __init__(self, model: str, batch_size: int, device: torch.device, compile: bool, bf16: bool, seed: int = 0,
                 channels_last: Optional[bool] = None, sample_bf16: bool = False):
        spec = MODELS[model]
        self.spec, self.batch_size, self.device = spec, batch_size, device
        # The phase's defaults with diffusers' objective (ddpm, like for like); a constant learning
        # rate and no logging or checkpoints inside the timed steps.
        s = saved(TrainSettings, {**PHASE_DEFAULTS[spec["kind"]], "process": "ddpm", "network": spec["network"], "batch_size": batch_size, "seed": seed,
                                  "lr": 1e-4, "warmup": 0, "lr_decay": "none", "log_every": 10**9, "checkpoint_every": 10**9})
        g = torch.Generator().manual_seed(seed)
        x = torch.rand((max(1024, batch_size), *spec["shape"]), generator=g) * 2 - 1
        ds = Dataset("synthetic", x, kind=spec["kind"])  # speed does not depend on the pixels
        torch.manual_seed(seed)
        net = build_network(s, ds.shape, 0)
        self.parameters = sum(p.numel() for p in net.parameters())
        self.loop = dataclasses.replace(loop_config(s, batch_size, bf16), steps=0)
        images = spec["kind"] == "images"
        # None: as `ddpmctl train` and `ddpmctl sample` choose; True or False: both alike.
        train_cl = images and channels_last_pays(device, training=True) if channels_last is None else channels_last
        self.sample_cl = images and channels_last_pays(device, training=False) if channels_last is None else channels_last
        self.state = make_state(net, self.loop, device, seed, channels_last=train_cl, compile=compile)
        self.process = build_process(s)
        self.loss = objective(s, ds, self.process)
        self.record = RunRecord(s, DataInfo(spec["shape"], 0, spec["kind"], len(ds), 1.0))
        self.x = ds.x.to(device)
        self.compile, self.sample_bf16 = compile, sample_bf16
        self._sampling_model = None

    def train(self, steps: int) -> None:
        train(self.state, self.loss, self.x, None, dataclasses.replace(self.loop, steps=self.state.step + steps))

    def sample(self, nfe: int) -> None:
        if self._sampling_model is None:  # the EMA weights as they are now, as pipeline.load_model sets them up
            net = copy.deepcopy(self.state.ema).to(memory_format=torch.channels_last if self.sample_cl else torch.contiguous_format)
            if self.compile:
                net = torch.compile(net)
            self._sampling_model = Model(None, self.record, net, self.process, 0, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.sample_bf16):
            sample(self._sampling_model, self.batch_size, "ddpm", nfe, seed=0, batch_size=self.batch_size)


def diffusers_unet_config(shape: tuple[int, ...]) -> dict:
    """UNet2DModel arguments mirroring ddpmctl's default U-Net for ``shape``: the same levels,
    channels, residual blocks per level and attention resolutions (one head), GroupNorm
    groups of the first level (diffusers has one group count for all levels)."""
    C, H, W = shape
    sizes = default_sizes(shape)
    ch, mult, attn = sizes["channels"], sizes["channel_mult"], set(sizes["attn_resolutions"])
    down, res = [], min(H, W)
    for i, _ in enumerate(mult):
        down.append("AttnDownBlock2D" if res in attn else "DownBlock2D")
        if i < len(mult) - 1:
            res = (res + 1) // 2
    up = [name.replace("Down", "Up") for name in reversed(down)]
    return {
        "sample_size": H, "in_channels": C, "out_channels": C, "layers_per_block": sizes["num_res_blocks"],
        "block_out_channels": tuple(ch * m for m in mult), "down_block_types": tuple(down), "up_block_types": tuple(up),
        "attention_head_dim": ch * mult[-1], "norm_num_groups": _groups(ch, 32),
    }


class Diffusers:
    """diffusers' UNet2DModel and DDPMScheduler, trained and sampled as its examples do.

    By default on synthetic data with the example's constant learning rate (1e-4, torch's AdamW
    weight decay, clip 1, EMA 0.999); given ``x`` and a ``loop`` (training.LoopConfig), on that
    data with ddpmctl's settings: its learning rate and schedule, weight decay, clip and EMA decay."""

    name = "diffusers"

    def __init__(self, model: str, batch_size: int, device: torch.device, bf16: bool, seed: int = 0,
                 x: Optional[torch.Tensor] = None, loop=None, sample_bf16: bool = False):
        try:
            from diffusers import DDPMScheduler, UNet2DModel
            from diffusers.training_utils import EMAModel
        except ImportError:
            raise ConfigError("--vs diffusers needs the diffusers package; install it with `pip install diffusers` (ddpmctl's optional extra `bench`).") from None
        spec = MODELS[model]
        if not has_counterpart(model):
            raise OptionsError(f"diffusers has no counterpart of the {model} model (UNet2DModel mirrors the U-Nets on images); drop --vs or choose U-Net models.")
        self.spec, self.batch_size, self.device, self.bf16, self.sample_bf16 = spec, batch_size, device, bf16, sample_bf16
        torch.manual_seed(seed)
        self.config = diffusers_unet_config(spec["shape"])
        self.unet = UNet2DModel(**self.config).to(device)
        self.parameters = sum(p.numel() for p in self.unet.parameters())
        self.scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=True)
        self.lr_schedule = None
        if loop is None:
            self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-4)
        else:
            self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
            self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_at(step, loop) / loop.lr)
        self.grad_clip = 1.0 if loop is None else loop.grad_clip
        self.ema = EMAModel(self.unet.parameters(), decay=0.999 if loop is None else loop.ema_decay, use_ema_warmup=True)
        self.ema.to(device)
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.step = 0
        if x is None:
            g = torch.Generator().manual_seed(seed)
            x = torch.rand((max(1024, batch_size), *spec["shape"]), generator=g) * 2 - 1
        self.x = x.to(device)

    def train(self, steps: int) -> None:
        B, g = self.batch_size, self.g
        self.unet.train()
        for _ in range(steps):
            x0 = self.x[torch.randint(0, self.x.shape[0], (B,), device=self.device, generator=g)]
            noise = torch.randn(x0.shape, device=self.device, generator=g)
            t = torch.randint(0, T, (B,), device=self.device, generator=g)
            x_t = self.scheduler.add_noise(x0, noise, t)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                eps_hat = self.unet(x_t, t).sample
            loss = F.mse_loss(eps_hat.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.grad_clip)
            self.optimizer.step()
            if self.lr_schedule is not None:
                self.lr_schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.unet.parameters())
            self.step += 1

    @torch.no_grad()
    def sample(self, nfe: int) -> None:
        self.unet.eval()
        self.scheduler.set_timesteps(nfe)
        x = torch.randn((self.batch_size, *self.spec["shape"]), device=self.device, generator=self.g)
        for t in self.scheduler.timesteps:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.sample_bf16):
                eps_hat = self.unet(x, t).sample
            x = self.scheduler.step(eps_hat.float(), t, x, generator=self.g).prev_sample


def has_counterpart(model: str) -> bool:
    """Whether diffusers' UNet2DModel mirrors this model (the U-Nets on images)."""
    return MODELS[model]["network"] == "unet"


def check(models: list[str], settings: Settings) -> None:
    """Refuse settings that cannot be measured, before anything is built."""
    for m in models:
        if m not in MODELS:
            raise OptionsError(f"unknown model {m!r} for --model; known: {', '.join(MODELS)}.")
    if settings.vs not in (None, "diffusers"):
        raise OptionsError(f"--vs knows only diffusers, not {settings.vs!r}.")
    if settings.precision not in ("auto", "fp32", "bf16"):
        raise OptionsError(f"--precision must be auto, fp32 or bf16; got {settings.precision!r}.")
    if not 1 <= settings.nfe <= T:
        raise OptionsError(f"--nfe must be between 1 and the T = {T} training steps of the default schedule; got {settings.nfe}.")


def warm_up(side, settings: Settings) -> None:
    """Compilation, allocator, caches: a few training steps and a short sampling run."""
    side.train(settings.warmup_steps)
    side.sample(2)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def interleaved(sides: dict, settings: Settings, device: torch.device, tick: Callable[[str], None] = lambda d: None) -> tuple[dict, dict]:
    """Seconds of ``settings.train_steps`` training steps and of one ``settings.nfe``-step sampling
    run of each side, per repeat; repeats interleaved (ours, theirs, ours, theirs ...) so that
    other load on the machine slows all sides alike."""
    train_s = {name: [] for name in sides}
    sample_s = {name: [] for name in sides}
    for r in range(settings.repeats):
        for name, side in sides.items():
            tick(f"training, {name}, repeat {r + 1}")
            train_s[name].append(timed(lambda: side.train(settings.train_steps), device))
        for name, side in sides.items():
            tick(f"sampling {settings.nfe} steps, {name}, repeat {r + 1}")
            sample_s[name].append(timed(lambda: side.sample(settings.nfe), device))
    return train_s, sample_s


def measure(model: str, settings: Settings, device: torch.device, tick: Callable[[str], None] = lambda d: None) -> dict:
    """Throughputs of one model (ours, and theirs with settings.vs), interleaved repeats."""
    check([model], settings)
    fast_math(device)
    # Training autocasts as `ddpmctl train` would; sampling only when bf16 is asked for, as
    # `ddpmctl sample` runs float32 (bf16 sampling was slower on an AMX CPU: 134 against 162 images/s).
    bf16 = use_bf16(settings.precision, device, images=MODELS[model]["kind"] == "images")
    batch = settings.batch_size or MODELS[model]["batch_size"]
    sample_bf16 = settings.precision == "bf16"
    sides = [Ours(model, batch, device, settings.compile, bf16, sample_bf16=sample_bf16)]
    if settings.vs == "diffusers":
        sides.append(Diffusers(model, batch, device, bf16, sample_bf16=sample_bf16))
        ratio = sides[1].parameters / sides[0].parameters
        if abs(ratio - 1) > 0.1:
            raise ConfigError(f"the diffusers U-Net has {sides[1].parameters:,} parameters against ddpmctl's {sides[0].parameters:,}, more than 10% apart; the comparison would not be fair.")

    for side in sides:  # warm-up, then one step of each, for memory
        tick(f"{model}: warm-up {side.name}")
        warm_up(side, settings)
        side.train_peak = peak_step_bytes(lambda: side.train(1), device)
        side.sample_peak = peak_step_bytes(lambda: side.sample(1), device)
    train_s, sample_s = interleaved({s.name: s for s in sides}, settings, device, tick=lambda d: tick(f"{model}: {d}"))

    def rates(seconds, images):
        return [images / s for s in seconds]

    out = {"model": model, "shape": list(MODELS[model]["shape"]), "network": MODELS[model]["network"], "batch_size": batch,
           "nfe": settings.nfe, "train_steps": settings.train_steps, "repeats": settings.repeats, "sides": {}}
    for side in sides:
        train_rates = rates(train_s[side.name], settings.train_steps * batch)
        sample_rates = rates(sample_s[side.name], batch)
        out["sides"][side.name] = {
            "parameters": side.parameters,
            "train_images_per_s": statistics.median(train_rates), "train_images_per_s_runs": train_rates,
            "sample_images_per_s": statistics.median(sample_rates), "sample_images_per_s_runs": sample_rates,
            "train_step_peak_mb": side.train_peak / 2**20, "sample_step_peak_mb": side.sample_peak / 2**20,
        }
        if isinstance(side, Diffusers):
            out["sides"][side.name]["unet_config"] = side.config
    if len(sides) == 2:  # per-repeat ratios (the two ran back to back), then their median
        a, b = sides[0].name, sides[1].name
        out["ratios"] = {
            "train": statistics.median(x / y for x, y in zip(out["sides"][a]["train_images_per_s_runs"], out["sides"][b]["train_images_per_s_runs"])),
            "sample": statistics.median(x / y for x, y in zip(out["sides"][a]["sample_images_per_s_runs"], out["sides"][b]["sample_images_per_s_runs"])),
        }
    return out


def environment(device: torch.device) -> dict:
    """What the numbers depend on."""
    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "processor": platform.processor() or None, "python": platform.python_version()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return env


def markdown(results: list[dict], env: dict) -> str:
    """The results as a Markdown table (ratios are ddpmctl / diffusers, > 1: ddpmctl faster)."""
    lines = [f"Device {env['device']}, torch {env['torch']}, {env['threads']} threads"
             + (f", diffusers {env['diffusers']}" if "diffusers" in env else "") + ".", "",
             "| model | batch | side | parameters | train images/s | sample images/s (NFE) | train step peak MB | sample step peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, s in r["sides"].items():
            lines.append(f"| {r['model']} | {r['batch_size']} | {name} | {s['parameters']:,} | {s['train_images_per_s']:.1f} | "
                         f"{s['sample_images_per_s']:.3g} ({r['nfe']}) | {s['train_step_peak_mb']:.1f} | {s['sample_step_peak_mb']:.1f} |")
        if "ratios" in r:
            lines.append(f"| {r['model']} | | ratio ddpmctl / diffusers | | **{r['ratios']['train']:.2f}x** | **{r['ratios']['sample']:.2f}x** | | |")
    lines += ["", "Medians of interleaved repeats; a ratio is the median of the per-repeat ratios."]
    return "\n".join(lines) + "\n"
