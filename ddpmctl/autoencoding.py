"""Training an autoencoder for latent diffusion into its own run directory.

    session = AutoencoderSession.prepare({"data": "fashion-mnist", "data_options": {"size": 32}})
    outcome = session.run()                     # trains, writes RUN/stop.json
    ae = latent.Autoencoder.load(outcome.run)   # encode, decode

    runs/<name>/
      config.json            record.AutoencoderRecord: settings, data, latent shape
      checkpoints/           safetensors (model, EMA, optimizer, random streams) + the scale factor
      metrics.jsonl          loss records; an "eval" record per checkpoint: reconstruction MSE, PSNR
      reconstructions.png    held-out images (odd rows) above their reconstructions (even rows)
      stop.json              why and when training ended

The loss (Rombach et al. 2022, appendix G, without the perceptual and adversarial terms, whose
pretrained networks cannot be fetched here) is the per-pixel L1 (or L2) reconstruction error of
a latent drawn from q(z | x), plus ``kl_weight`` times the KL divergence of q(z | x) from N(0, I)
per latent value. The loop, EMA, checkpoints and resume are training.py's, as for a diffusion run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ddpmctl import registry
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.config import AE_RESUMABLE, AutoencoderSettings, load_settings, resumed
from ddpmctl.datasets.base import Dataset, to_uint8
from ddpmctl.devices import channels_last_pays, fast_math, pick_device, set_threads, use_bf16
from ddpmctl.errors import ConfigError, DataError, RunError
from ddpmctl.events import Events
from ddpmctl.latent import Autoencoder, read_record, open_run, scale_factor
from ddpmctl.pipeline import build_dataset, versions
from ddpmctl.record import AutoencoderRecord, DataInfo, PluginInfo
from ddpmctl.run import RunDir, check_run_folder
from ddpmctl.training import Hooks, LoopConfig, TrainState, make_state, train as train_loop


class AutoencoderLoss:
    """L_rec + kl_weight * KL, each a mean per value: reconstruction per pixel, KL per latent value."""

    def __init__(self, latent_shape: tuple[int, ...], loss: str, kl_weight: float):
        self.latent_shape, self.loss, self.kl_weight = tuple(latent_shape), loss, kl_weight

    def __call__(self, net, x0: torch.Tensor, y, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn((x0.shape[0], *self.latent_shape), generator=generator, device=x0.device)
        x_rec, kl = net(x0, noise)  # z = mean + std * noise (reparameterisation)
        err = (x_rec.float() - x0).abs() if self.loss == "l1" else (x_rec.float() - x0).square()
        return err.mean() + self.kl_weight * kl.float().mean() / math.prod(self.latent_shape)


def reconstruction_errors(ae: Autoencoder, x: torch.Tensor) -> dict[str, float]:
    """MSE in [-1, 1] units and PSNR in dB of 8-bit images (as saved files are) of ``x`` and decode(encode(x))."""
    x_rec = ae.decode(ae.encode(x))
    mse = float((x_rec - x).square().mean())
    mse8 = float((to_uint8(x_rec).float() - to_uint8(x).float()).square().mean())
    return {"mse": mse, "psnr": 10 * math.log10(255.0**2 / max(mse8, 1e-10))}


def settings(flags: dict, config_file: Optional[Path], resume: Optional[Path]) -> tuple[AutoencoderSettings, Optional[RunDir]]:
    """Settings of a new autoencoder run, or of a resumed one (only AE_RESUMABLE may change)."""
    if resume is None:
        return load_settings(AutoencoderSettings, config_file, **flags), None
    run = open_run(resume)
    return resumed(AutoencoderSettings, config_file, read_record(run).settings.model_dump(mode="json"), AE_RESUMABLE, run.path, **flags), run


@dataclass
class Outcome:
    run: Path
    reason: str  # steps, interrupted or max-time
    step: int
    steps: int
    seconds: float
    errors: dict  # the last reconstruction MSE and PSNR on held-out images


class AutoencoderSession:
    """One autoencoder training run; build it with ``prepare``."""

    def __init__(self, s: AutoencoderSettings, run: Optional[RunDir], ds: Dataset, device: torch.device, events: Events):
        self.s, self.run_dir, self.ds, self.device, self.events = s, run, ds, device, events
        fast_math(device)
        torch.manual_seed(s.seed)
        self.net = registry.build("autoencoder", s.autoencoder, s.autoencoder_options, data_shape=ds.shape)
        self.loop = LoopConfig(steps=s.steps, batch_size=s.batch_size, lr=s.lr, warmup=s.warmup, lr_decay=s.lr_decay, ema_decay=s.ema_decay,
                               grad_clip=s.grad_clip, log_every=s.log_every, checkpoint_every=s.checkpoint_every, bf16=use_bf16(s.precision, device, images=True))
        self.state: TrainState = make_state(self.net, self.loop, device, s.seed, channels_last=channels_last_pays(device, training=True))
        e = registry.entry("autoencoder", s.autoencoder)
        self.record = AutoencoderRecord(s, DataInfo.of(ds), tuple(self.net.latent_shape), {"autoencoder": PluginInfo(e.name, e.dist, e.version)},
                                        versions(), sum(p.numel() for p in self.net.parameters()))
        self.held = ds.fresh(s.eval_n, s.seed)[0] if ds.fresh_fn is not None else ds.x[-s.eval_n:]
        self.offset, self.errors = 0.0, {}

    @classmethod
    def prepare(cls, flags: dict, config_file: Optional[Path] = None, resume: Optional[Path] = None, events: Optional[Events] = None) -> AutoencoderSession:
        """Check the settings, build the data, network and optimiser, and make or reopen the run directory."""
        s, run = settings(flags, config_file, resume)
        registry.validate_options("dataset", s.data, s.data_options)
        registry.validate_options("autoencoder", s.autoencoder, s.autoencoder_options)
        check_run_folder(s.runs_dir, run)  # before any work
        set_threads(s.threads)
        device = pick_device(s.device)
        if s.data_dir is not None:  # the setting is where datasets look, as for `ddpmctl train`
            os.environ["DDPMCTL_DATA_DIR"] = str(s.data_dir)
        ds = build_dataset(s.data, s.data_options)
        if ds.kind != "images":
            raise DataError(f"an autoencoder encodes images, but {s.data} holds {ds.kind}; train diffusion on 2-D points directly.")
        session = cls(s, run, ds, device, events or Events())
        try:
            session._open()  # makes or reopens the run, locked for this process
        except BaseException:
            if session.run_dir is not None:
                session.run_dir.unlock()
            raise
        return session

    def _open(self) -> None:
        if self.run_dir is None:
            name = self.s.name or f"ae-{self.s.data}-{time.strftime('%Y%m%d-%H%M%S')}"
            self.run_dir = RunDir.create(self.s.runs_dir / name, self.record)
            return
        run = self.run_dir
        run.lock()
        run.remove_partial_writes()
        if not run.checkpoints():
            run.check_restart()  # unless its checkpoints were removed: its history is kept
            run.truncate_metrics(0)
            return
        tensors, meta, path, skipped = run.load_checkpoint()
        for msg in skipped:
            self.events.note(f"skipped a damaged checkpoint: {msg}", "warning")
        try:
            for msg in self.state.restore(tensors, meta):
                self.events.note(msg, "warning")
        except (RuntimeError, KeyError) as exc:
            raise ConfigError(f"checkpoint {path} does not fit this autoencoder ({str(exc).splitlines()[0]}).") from None
        if self.state.step >= self.s.steps:
            raise RunError(f"autoencoder {run.path} already reached step {self.state.step} of {self.s.steps}; pass a larger --steps to train further.")
        run.truncate_metrics(self.state.step)
        run.write_record(self.record)
        self.offset = max((r.get("time", 0.0) for r in run.metrics()), default=0.0)
        self.events.note(f"resuming {run.path} from {path.name} (step {self.state.step})")

    def autoencoder(self, scaled: bool = True) -> Autoencoder:
        """The EMA weights now, with the scale factor of their latents (``scaled``; else 1, as for a round trip)."""
        ema = self.state.ema
        return Autoencoder(self.record, ema, scale_factor(ema, self.ds.x) if scaled else 1.0, "", str(self.run_dir.path))

    def run(self, stop: Callable[[], bool] = lambda: False) -> Outcome:
        """Train to the end, ``max_time`` or until ``stop()``; write RUN/stop.json and the reconstructions.
        The run is unlocked at the end."""
        try:
            return self._run(stop)
        finally:
            self.run_dir.unlock()

    def _run(self, stop: Callable[[], bool]) -> Outcome:
        s, run = self.s, self.run_dir
        x = self.ds.x.to(self.device)
        self.t0, requested = time.perf_counter(), [False]

        def should_stop() -> bool:
            requested[0] = requested[0] or bool(stop())
            return requested[0] or (s.max_time is not None and s.max_time > 0 and self._now() >= s.max_time)

        hooks = Hooks(log=self._log, checkpoint=self._save, progress=lambda step: self.events.progress("train", step, s.steps), stop=should_stop)
        self.events.progress("train", self.state.step, s.steps)
        why = train_loop(self.state, AutoencoderLoss(self.record.latent_shape, s.loss, s.kl_weight), x, None, self.loop, hooks)
        seconds = time.perf_counter() - self.t0
        self._picture()
        reason = "steps" if why == "done" else ("interrupted" if requested[0] else "max-time")
        summary = {"reason": reason, "step": self.state.step, "steps": s.steps, "time": round(self.offset + seconds, 3), **self.errors}
        atomic_write_bytes(run.path / "stop.json", json.dumps(summary, indent=2).encode())
        return Outcome(run.path, reason, self.state.step, s.steps, seconds, self.errors)

    def _now(self) -> float:
        return round(self.offset + time.perf_counter() - self.t0, 3)

    def _log(self, rec: dict) -> None:
        rec = {**rec, "time": self._now()}
        self.run_dir.log(rec)
        self.events.record(rec)
        if "loss" in rec:
            self.events.progress("train", rec["step"], self.s.steps, f"loss {rec['loss']:.4f}" + self._quality())

    def _quality(self) -> str:
        return f"  PSNR {self.errors['psnr']:.1f} dB" if self.errors else ""

    def _save(self, step: int, _) -> None:
        """A checkpoint with the scale factor of its EMA weights, then their reconstruction errors."""
        ae = self.autoencoder()
        tensors, extra = self.state.tensors()
        meta = {"autoencoder": self.record.to_json(), "scale_factor": ae.scale_factor, **extra}
        self.run_dir.save_checkpoint(step, tensors, meta, keep=self.s.keep_checkpoints)
        self.errors = reconstruction_errors(ae, self.held)
        rec = {"step": step, "event": "eval", "metric": "reconstruction", "values": dict(self.errors), "scale_factor": ae.scale_factor, "time": self._now()}
        self.run_dir.log(rec)
        self.events.record(rec)

    def _picture(self) -> None:
        from ddpmctl import plots

        ae, x = self.autoencoder(scaled=False), self.held[:32]
        rows = torch.cat([torch.stack([x[i : i + 8], ae.decode(ae.encode(x[i : i + 8]))]).flatten(0, 1) for i in range(0, len(x), 8)])
        plots.image_grid(rows, self.run_dir.path / "reconstructions.png", nrow=8)
