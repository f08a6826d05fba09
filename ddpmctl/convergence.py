"""Convergence you can watch: quality measured during training, stop criteria, time to a threshold.

Every ``eval_every`` steps the EMA weights draw the same fixed-seed samples (the same x_T each
time) with a fast sampler, and a metric plugin scores them. The record goes to metrics.jsonl
beside the loss records:

    {"step", "time", "event": "eval", "metric", "values", "floor", "n", "sampler", "steps", "nfe", "eval_s"}

and the samples to ``RUN/convergence/step-NNNNNNNN.npz`` (for the strip of samples over training).
``time`` is the run's wall time in seconds: evaluations included, resumed sessions added up.

Stop criteria (the first one met ends the run, with a checkpoint):

- ``until_loss X``:        the smoothed loss, the mean of the last LOSS_WINDOW logged losses, <= X;
- ``until_metric NAME<=X``: an evaluation's value NAME meets the threshold (``>=`` for metrics
  that grow); NAME is a value key (``w2``) or a metric name (``wasserstein``: its first value);
- ``max_time S``:          the run's wall time >= S seconds.

RUN/stop.json says why the run stopped, and the step and time at which each threshold was met.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ddpmctl.datasets.base import to_float, to_uint8

LOSS_WINDOW = 5  # logged losses averaged into the smoothed loss (5 x log_every steps)
STRIP_IMAGES = 10  # images per row of the strip of samples over training
STRIP_ROWS = 10  # evaluations shown in the strip, evenly spaced


# ---------------------------------------------------------------------------------------------
# Thresholds and durations


@dataclass(frozen=True)
class Threshold:
    """``NAME<=X`` or ``NAME>=X``: NAME is a value key (w2), a metric name (its first value), or loss."""

    name: str
    op: str  # "<=" or ">="
    value: float

    @classmethod
    def parse(cls, text: str) -> "Threshold":
        m = re.fullmatch(r"\s*([^<>=\s][^<>=]*?)\s*(<=|>=)\s*(\S+)\s*", str(text))
        try:
            value = float(m[3]) if m else math.nan
        except ValueError:
            value = math.nan
        if not m or not math.isfinite(value):
            raise ValueError("not of the form NAME<=X or NAME>=X with a number X, for example wasserstein<=0.1")
        return cls(m[1], m[2], value)

    def met(self, v: float) -> bool:
        return v <= self.value if self.op == "<=" else v >= self.value

    def key(self, metric: str, values: dict) -> Optional[str]:
        """The value this threshold reads in an evaluation of ``metric``, or None."""
        if self.name in values:
            return self.name
        if self.name == metric and values:
            return next(iter(values))
        return None

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: Any) -> float:
    """Seconds from 90, 90s, 15m, 1h or 1h30m."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    try:
        return float(s)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", s)
    if not parts or "".join(n + u for n, u in parts) != s.replace(" ", ""):
        raise ValueError("not a duration: use seconds, or a number with s, m or h, for example 90s, 15m or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


# ---------------------------------------------------------------------------------------------
# Records of metrics.jsonl


def loss_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "loss" in r]


def eval_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("event") == "eval" and r.get("values")]


def smoothed(losses: list[float], window: int = LOSS_WINDOW) -> Optional[float]:
    """Mean of the last ``window`` logged losses; None until there are that many."""
    if len(losses) < window:
        return None
    return sum(losses[-window:]) / window


def primary_key(records: list[dict]) -> Optional[str]:
    """The first value of the first evaluation: what a curve of quality shows by default."""
    evals = eval_records(records)
    return next(iter(evals[0]["values"])) if evals else None


def curve(records: list[dict], key: str) -> list[tuple[int, float, float]]:
    """(step, time, value) of ``key``: a value of the evaluations, or ``loss`` (smoothed)."""
    if key == "loss":
        out, losses = [], []
        for r in loss_records(records):
            losses.append(r["loss"])
            v = smoothed(losses)
            if v is not None:
                out.append((r["step"], r["time"], v))
        return out
    return [(r["step"], r["time"], r["values"][key]) for r in eval_records(records) if key in r["values"]]


def threshold_key(records: list[dict], threshold: Threshold) -> Optional[str]:
    """The key ``threshold`` reads in these records (``loss``, or a value of the evaluations)."""
    if threshold.name == "loss":
        return "loss"
    for r in eval_records(records):
        key = threshold.key(r["metric"], r["values"])
        if key is not None:
            return key
    return None


def first_crossing(records: list[dict], threshold: Threshold) -> Optional[dict]:
    """The first record where ``threshold`` is met: {"key", "step", "time", "value"}, or None."""
    key = threshold_key(records, threshold)
    if key is None:
        return None
    for step, t, v in curve(records, key):
        if math.isfinite(v) and threshold.met(v):
            return {"key": key, "step": step, "time": t, "value": v}
    return None


def final(records: list[dict], key: str) -> Optional[float]:
    """The last value of ``key`` (for loss: the smoothed loss, or the mean of all if fewer than the window)."""
    if key == "loss":
        losses = [r["loss"] for r in loss_records(records)]
        if not losses:
            return None
        return smoothed(losses) if len(losses) >= LOSS_WINDOW else sum(losses) / len(losses)
    points = curve(records, key)
    return points[-1][2] if points else None


# ---------------------------------------------------------------------------------------------
# Stop criteria


@dataclass
class Criteria:
    """The stop criteria of a run, fed its records as they are written."""

    until_loss: Optional[float] = None
    until_metric: Optional[Threshold] = None
    max_time: Optional[float] = None
    losses: list[float] = field(default_factory=list)
    met: dict[str, dict] = field(default_factory=dict)  # criterion -> {"step", "time", "value"} when first met
    reason: Optional[str] = None  # "until-loss", "until-metric" or "max-time" once one is met

    @property
    def active(self) -> bool:
        return bool(self.until_loss or self.until_metric or self.max_time)

    def on_record(self, rec: dict) -> None:
        """Feed one metrics.jsonl record; sets ``reason`` when a criterion is met."""
        if "loss" in rec:
            self.losses.append(rec["loss"])
            loss = smoothed(self.losses)
            if self.until_loss and loss is not None and loss <= self.until_loss:
                self._meet("until-loss", f"loss<={self.until_loss:g}", rec, loss)
        if rec.get("event") == "eval" and self.until_metric is not None:
            key = self.until_metric.key(rec["metric"], rec["values"])
            if key is not None and math.isfinite(rec["values"][key]) and self.until_metric.met(rec["values"][key]):
                self._meet("until-metric", str(self.until_metric), rec, rec["values"][key])

    def on_time(self, step: int, seconds: float) -> None:
        if self.max_time and seconds >= self.max_time:
            self._meet("max-time", f"time>={self.max_time:g}s", {"step": step, "time": round(seconds, 3)}, round(seconds, 3))

    def _meet(self, reason: str, what: str, rec: dict, value: float) -> None:
        self.met.setdefault(what, {"step": rec["step"], "time": rec["time"], "value": value})
        self.reason = self.reason or reason

    def explain(self) -> str:
        """One phrase: which criterion was met, where."""
        for what, at in self.met.items():
            return f"{what} met at step {at['step']}: {at['value']:.4g} after {at['time']:.1f} s"
        return "no criterion met"

    def summary(self, reason: str, step: int, seconds: float) -> dict:
        """The content of RUN/stop.json."""
        return {
            "reason": reason,
            "step": step,
            "time": round(seconds, 3),
            "criteria": {"until_loss": self.until_loss or None, "until_metric": str(self.until_metric) if self.until_metric else None,
                         "max_time": self.max_time or None},
            "met": self.met,
            "smoothed_loss": smoothed(self.losses),
            "smoothing": f"mean of the last {LOSS_WINDOW} logged losses",
        }


# ---------------------------------------------------------------------------------------------
# Evaluation during training


@dataclass
class Evaluator:
    """Scores fixed-seed samples of a model: the same x_T (and labels) at every call."""

    metric: str
    fn: Callable
    options: dict
    dataset: Any  # datasets.base.Dataset
    n: int
    sampler: str = "ddim"
    steps: int = 50
    seed: int = 0
    labels: Optional[torch.Tensor] = None

    def __call__(self, model) -> tuple[dict, torch.Tensor]:
        """Sample from ``model`` (a pipeline.Model over the EMA weights) and score the samples;
        returns the record (without ``time``) and the samples. The network is left in the mode
        it was in."""
        from ddpmctl.errors import NumericalError
        from ddpmctl.pipeline import sample

        t0 = time.perf_counter()
        net = model.net
        was_training = net.training
        net.eval()
        try:
            x, rec = sample(model, self.n, self.sampler, min(self.steps, model.schedule.T), self.seed, labels=self.labels, batch_size=1024)
        except NumericalError as exc:  # a diverging model is a point of the curve, not the end of training
            return {"step": model.step, "event": "eval", "metric": self.metric, "values": {}, "error": str(exc)}, None
        finally:
            net.train(was_training)
        kwargs = dict(self.options)
        if "labels" in inspect.signature(self.fn).parameters:
            kwargs["labels"] = self.labels
        result = self.fn(x, self.dataset, **kwargs)
        record = {
            "step": model.step, "event": "eval", "metric": self.metric,
            "values": {k: float(v) for k, v in result.values.items()},
            "floor": {k: float(v) for k, v in result.floor.items()},
            "n": self.n, "sampler": self.sampler, "steps": rec["steps"], "nfe": rec["nfe"], "seed": self.seed,
            "eval_s": round(time.perf_counter() - t0, 3),
        }
        return record, x


def eval_labels(y: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """The classes present in the training labels ``y``, in equal contiguous blocks of n."""
    if y is None:
        return None
    present = torch.unique(y.cpu())
    return present[torch.arange(n) * len(present) // n]


@dataclass
class Watch:
    """What a training run watches: evaluations every ``every`` steps (0: none) and the stop criteria."""

    every: int
    evaluator: Optional[Evaluator]
    criteria: Criteria


def watch(s, ds) -> Watch:
    """The evaluations and stop criteria of resolved TrainSettings ``s`` on dataset ``ds``."""
    from ddpmctl import pipeline, registry
    from ddpmctl.errors import ConfigError

    threshold = Threshold.parse(s.until_metric) if s.until_metric else None
    criteria = Criteria(s.until_loss or None, threshold, s.max_time or None)
    metric = s.eval_metric
    if threshold is not None and threshold.name in registry.names("metric"):
        if metric is not None and metric != threshold.name:
            raise ConfigError(f"until_metric reads the metric {threshold.name} but eval_metric is {metric}; make them agree or name a value of {metric}.")
        metric = threshold.name
    every = s.eval_every if s.eval_every is not None else (500 if threshold else 0)
    if threshold is not None and not every:
        raise ConfigError(f"until_metric {threshold} needs evaluations; set eval_every to a number of steps (--eval-every N).")
    if not every:
        return Watch(0, None, criteria)
    metric = metric or pipeline.default_metric(ds.kind, ds.shape)
    fn, opts = registry.resolve("metric", metric, s.eval_options)
    registry.validate_options("sampler", s.eval_sampler, None)
    labels = eval_labels(ds.y, s.eval_n) if s.cond == "class" else None
    evaluator = Evaluator(metric, fn, opts.model_dump(), ds, s.eval_n, s.eval_sampler, s.eval_steps, s.seed, labels)
    return Watch(every, evaluator, criteria)


def check_threshold(threshold: Optional[Threshold], record: dict) -> None:
    """After the first evaluation: the value ``until_metric`` names must be one the metric reports."""
    from ddpmctl.errors import ConfigError

    if threshold is None or not record.get("values"):
        return
    if threshold.key(record["metric"], record["values"]) is None:
        keys = ", ".join(record["values"])
        raise ConfigError(f"until_metric reads {threshold.name!r}, which {record['metric']} does not report; use {record['metric']} or one of its values: {keys}.")


# ---------------------------------------------------------------------------------------------
# Files of a run


def samples_path(run_path: Path, step: int) -> Path:
    return Path(run_path) / "convergence" / f"step-{step:08d}.npz"


def save_samples(run_path: Path, step: int, x: torch.Tensor, labels: Optional[torch.Tensor], kind: str) -> Path:
    """The evaluation's samples: all points, or STRIP_IMAGES of the images as uint8 pixels."""
    from ddpmctl.checkpoint import atomic_write_bytes

    if kind == "images":  # evenly spaced: every class of a conditional model (labels come in blocks)
        pick = torch.linspace(0, len(x) - 1, min(STRIP_IMAGES, len(x))).round().long()
        x = to_uint8(x[pick])
        labels = None if labels is None else labels[pick]
    buf = io.BytesIO()
    np.savez(buf, samples=x.numpy(), **({} if labels is None else {"labels": labels.numpy()}))
    path = samples_path(run_path, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_samples(path: Path) -> torch.Tensor:
    with np.load(path, allow_pickle=False) as f:
        x = torch.from_numpy(f["samples"])
    return to_float(x) if x.dtype == torch.uint8 else x.float()


def write_plots(run) -> list[Path]:
    """RUN/loss.png, and when there are evaluations RUN/convergence.png (loss and quality against
    steps and wall time) and RUN/samples-over-training.png (the fixed-seed samples of the evaluations)."""
    from ddpmctl import plots

    records = run.metrics()
    if not records:
        return []
    out = [plots.loss_curve(records, run.path / "loss.png", title=f"training loss: {run.path.name}")]
    if not eval_records(records):
        return out
    evals = [r for r in eval_records(records) if samples_path(run.path, r["step"]).is_file()]
    cfg = run.record["config"]
    lines = {}
    if cfg.get("until_metric"):
        lines["metric"] = Threshold.parse(cfg["until_metric"])
    if cfg.get("until_loss"):
        lines["loss"] = cfg["until_loss"]
    key = primary_key(records)
    if "metric" in lines:
        key = threshold_key(records, lines["metric"]) or key
    out.append(plots.convergence([(run.path.name, records)], key, run.path / "convergence.png",
                                 title=f"{run.path.name}: loss and {key} during training", lines=lines, window=LOSS_WINDOW))
    if evals:
        picks = [evals[round(i * (len(evals) - 1) / (STRIP_ROWS - 1))] for i in range(STRIP_ROWS)] if len(evals) > STRIP_ROWS else evals
        picks = list({r["step"]: r for r in picks}.values())
        frames = [(f"step {r['step']}\n{key} {r['values'].get(key, math.nan):.3g}", load_samples(samples_path(run.path, r["step"]))) for r in picks]
        kind = run.record["data"]["kind"]
        title = f"{run.path.name}: fixed-seed samples ({picks[0]['sampler']}, {picks[0]['steps']} steps) over training"
        if kind == "points":
            absmax = run.record["data"].get("absmax") or 4.0
            out.append(plots.panels_2d(frames, run.path / "samples-over-training.png", title=title, lim=(-1.3 * absmax, 1.3 * absmax)))
        else:
            out.append(plots.image_rows(frames, run.path / "samples-over-training.png", title=title))
    return out


def read_stop(run_path: Path) -> Optional[dict]:
    path = Path(run_path) / "stop.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
