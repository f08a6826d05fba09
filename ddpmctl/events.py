"""What long work reports while it runs: progress, records and notes.

The library never prints. Training, sampling and evaluation call an ``Events`` object; the base
class ignores everything (a script that wants silence passes nothing), the CLI renders the calls
with rich (cli/render.py), and a notebook can subclass it, or use ``Printer``:

    class Mine(ddpmctl.Events):
        def record(self, rec):                # each metrics.jsonl record, as it is written
            if "loss" in rec:
                print(rec["step"], rec["loss"])

    run = ddpmctl.train(data="spiral", steps=2000, events=Mine())
"""

from __future__ import annotations

import sys
from typing import Optional


class Events:
    """Callbacks of long work; every method does nothing unless overridden."""

    def progress(self, task: str, done: int, total: Optional[int], info: str = "") -> None:
        """``done`` of ``total`` units of ``task`` (training steps, samples, images scored);
        ``info`` is a short status (loss, rate, latest quality)."""

    def record(self, rec: dict) -> None:
        """A metrics.jsonl record of a training run: a loss record, an evaluation or a skipped step."""

    def note(self, text: str, level: str = "info") -> None:
        """One sentence for the user; ``level`` is "info" or "warning"."""

    def metric_progress(self, metric: str):
        """The ``progress(what, done, total)`` callback handed to a long metric."""
        return lambda what, done, total: self.progress(f"{metric}: {what}", done, total)


class Printer(Events):
    """Plain text on a stream: notes, and a line per loss record every ``every`` records and
    per evaluation. Enough for a notebook or a log file."""

    def __init__(self, every: int = 10, stream=None):
        self.every, self.stream, self._losses = every, stream or sys.stdout, 0

    def note(self, text: str, level: str = "info") -> None:
        print(("warning: " if level == "warning" else "") + text, file=self.stream)

    def record(self, rec: dict) -> None:
        if "loss" in rec:
            self._losses += 1
            if self._losses % self.every == 0:
                print(f"step {rec['step']}: loss {rec['loss']:.4f}", file=self.stream)
        elif rec.get("event") == "eval" and rec.get("values"):
            values = ", ".join(f"{k} {v:.4g}" for k, v in rec["values"].items())
            print(f"step {rec['step']}: {rec['metric']} {values}", file=self.stream)
