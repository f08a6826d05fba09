"""The metric contract: a value, its floor on real data of the same size, and the protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
