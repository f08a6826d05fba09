"""Stop criteria of a training run, and the thresholds and durations they are written in.

- ``until_loss X``:        the smoothed loss, the mean of the last LOSS_WINDOW logged losses, <= X;
- ``until_metric NAME<=X``: an evaluation's value NAME meets the threshold (``>=`` for metrics
  that grow); NAME is a value key (``w2``) or a metric name (``wasserstein``: its first value);
- ``max_time S``:          the run's wall time >= S seconds.

The first criterion met ends the run; ``Criteria.summary`` is what RUN/stop.json holds.
Nothing here imports torch: settings validate their thresholds with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

LOSS_WINDOW = 5  # logged losses averaged into the smoothed loss (5 x log_every steps)


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
# The smoothed loss


def smoothed(losses: list[float], window: int = LOSS_WINDOW) -> Optional[float]:
    """Mean of the last ``window`` logged losses; None until there are that many."""
    if len(losses) < window:
        return None
    return sum(losses[-window:]) / window


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
