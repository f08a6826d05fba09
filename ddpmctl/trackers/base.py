"""The tracker interface (ddpmctl.trackers): what a tracker plugin implements."""

from __future__ import annotations

from pathlib import Path


class Tracker:
    """What a tracker does; every method does nothing unless overridden."""

    def record(self, rec: dict) -> None:
        """A metrics.jsonl record, as it is written: {"step", "loss", "grad_norm", "lr", "time"},
        {"step", "event": "eval", "metric", "values", ...} or another event."""

    def picture(self, tag: str, step: int, path: Path) -> None:
        """A picture the run has just written at ``step``: a sample grid (``tag`` "grids"), or a
        plot at the session's end (``tag`` its name: loss, convergence, samples-over-training)."""

    def close(self) -> None:
        """The session has ended: flush and let go of what it holds."""
