"""Convergence you can watch: quality measured during training, stop criteria, time to a threshold.

Every ``eval_every`` steps the EMA weights draw the same fixed-seed samples (the same x_T each
time) with a fast sampler, and a metric plugin scores them. The record goes to metrics.jsonl
beside the loss records:

    {"step", "time", "event": "eval", "metric", "values", "floor", "n", "sampler", "steps", "nfe", "eval_s"}

and the samples to ``RUN/convergence/step-NNNNNNNN.npz`` (for the strip of samples over training).
``time`` is the run's wall time in seconds: evaluations included, resumed sessions added up.

Stop criteria (``until_loss``, ``until_metric``, ``max_time``) live in stopping.py; RUN/stop.json says
why the run stopped, and the step and time at which each threshold was met.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ddpmctl import registry
from ddpmctl.errors import ConfigError, NumericalError
from ddpmctl.metrics.base import score
from ddpmctl.pipeline import default_metric, sample
from ddpmctl.samples import Samples
from ddpmctl.stopping import LOSS_WINDOW, Criteria, Threshold, smoothed

STRIP_IMAGES = 10  # images per row of the strip of samples over training
STRIP_ROWS = 10  # evaluations shown in the strip, evenly spaced


# ---------------------------------------------------------------------------------------------
# Records of metrics.jsonl


def loss_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "loss" in r]


def eval_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("event") == "eval" and r.get("values")]


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
        t0 = time.perf_counter()
        net = model.net
        was_training = net.training
        net.eval()
        try:
            x, rec = sample(model, self.n, self.sampler, min(self.steps, model.process.max_steps), self.seed, labels=self.labels, batch_size=1024)
        except NumericalError as exc:  # a diverging model is a point of the curve, not the end of training
            return {"step": model.step, "event": "eval", "metric": self.metric, "values": {}, "error": str(exc)}, None
        finally:
            net.train(was_training)
        result = score(self.fn, x, self.dataset, self.options, labels=self.labels)
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
    metric = metric or default_metric(ds.kind, ds.shape)
    fn, opts = registry.resolve("metric", metric, s.eval_options)
    registry.validate_options("sampler", s.eval_sampler, None)
    labels = eval_labels(ds.y, s.eval_n) if s.cond == "class" else None
    evaluator = Evaluator(metric, fn, opts.model_dump(), ds, s.eval_n, s.eval_sampler, s.eval_steps, s.seed, labels)
    return Watch(every, evaluator, criteria)


def check_threshold(threshold: Optional[Threshold], record: dict) -> None:
    """After the first evaluation: the value ``until_metric`` names must be one the metric reports."""
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
    """The evaluation's samples: all points, or STRIP_IMAGES of the images (as 8-bit pixels)."""
    if kind == "images":  # evenly spaced: every class of a conditional model (labels come in blocks)
        pick = torch.linspace(0, len(x) - 1, min(STRIP_IMAGES, len(x))).round().long()
        x, labels = x[pick], None if labels is None else labels[pick]
    return Samples(x.float().cpu(), None if labels is None else labels.cpu(), {"step": step}).save(samples_path(run_path, step))


def load_samples(path: Path) -> torch.Tensor:
    return Samples.load(path).x


def write_plots(run) -> list[Path]:
    """RUN/loss.png, and when there are evaluations RUN/convergence.png (loss and quality against
    steps and wall time) and RUN/samples-over-training.png (the fixed-seed samples of the evaluations)."""
    from ddpmctl import plots  # matplotlib: imported when a plot is drawn

    record = run.record  # a damaged config.json is refused before any picture is replaced
    records = run.metrics()
    if not records:
        return []
    out = [plots.loss_curve(records, run.path / "loss.png", title=f"training loss: {run.path.name}")]
    if not eval_records(records):
        return out
    evals = [r for r in eval_records(records) if samples_path(run.path, r["step"]).is_file()]
    cfg = record.config
    lines = {}
    if cfg.until_metric:
        lines["metric"] = Threshold.parse(cfg.until_metric)
    if cfg.until_loss:
        lines["loss"] = cfg.until_loss
    key = primary_key(records)
    if "metric" in lines:
        key = threshold_key(records, lines["metric"]) or key
    out.append(plots.convergence([(run.path.name, records)], key, run.path / "convergence.png",
                                 title=f"{run.path.name}: loss and {key} during training", lines=lines, window=LOSS_WINDOW))
    if evals:
        picks = [evals[round(i * (len(evals) - 1) / (STRIP_ROWS - 1))] for i in range(STRIP_ROWS)] if len(evals) > STRIP_ROWS else evals
        picks = list({r["step"]: r for r in picks}.values())
        frames = [(f"step {r['step']}\n{key} {r['values'].get(key, math.nan):.3g}", load_samples(samples_path(run.path, r["step"]))) for r in picks]
        kind = record.data.kind
        title = f"{run.path.name}: fixed-seed samples ({picks[0]['sampler']}, {picks[0]['steps']} steps) over training"
        if kind == "points":
            absmax = record.data.absmax or 4.0
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
