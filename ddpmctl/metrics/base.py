"""The metric contract: a value, its floor on real data of the same size, and the protocol."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class MetricResult:
    """``values`` and ``floor`` map the same keys to numbers; ``floor`` is the metric between
    two independent real sets of the sizes used, so a value is read against it."""

    metric: str
    values: dict[str, float]
    floor: dict[str, float]
    protocol: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


Progress = Optional[Callable[[str, int, int], None]]  # progress(what, done, total) of a long metric


def score(fn: Callable, samples: torch.Tensor, dataset, options: dict, labels: Optional[torch.Tensor] = None,
          progress: Progress = None, png: Optional[str] = None) -> MetricResult:
    """Call a metric plugin the one way every caller does (eval, bench, evaluations during
    training, the API): ``fn(samples, dataset, **options)``, plus the sample ``labels``, a
    ``progress`` callback and a ``png`` path for the metrics whose signature takes them."""
    kwargs = dict(options)
    params = inspect.signature(fn).parameters
    if "labels" in params:
        kwargs["labels"] = labels
    if "progress" in params and progress is not None:
        kwargs["progress"] = progress
    if "png" in params and png is not None and kwargs.get("png") is None:
        kwargs["png"] = png
    return fn(samples, dataset, **kwargs)
