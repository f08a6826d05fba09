"""The CLI's face of ``events.Events``: progress bars, notes and skipped steps drawn with rich, or
plain progress lines on stderr where there is no terminal to draw a bar on."""

from __future__ import annotations

import sys
import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ddpmctl.events import Events


class Rich(Events):
    """Draws the library's events on ``console``: one bar per task, notes as lines above them.

    Use as a context manager around an API call. ``transient`` bars vanish when done (sampling,
    metrics); training keeps its bar on screen. With ``lines`` and no terminal on ``console``
    (output piped or logged), progress is written instead as a plain line on stderr at every
    tenth of each task that runs longer than ``QUIET_S`` seconds, so that a long job does not
    look hung and a quick one says nothing more; notes still go to ``console``."""

    QUIET_S = 1.0

    def __init__(self, console: Console, transient: bool = True, lines: bool = False):
        self.console = console
        self.transient = transient
        self.lines: Optional[dict[str, list]] = {} if lines and not console.is_terminal else None  # task -> [start, tenths written]
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=transient)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "Rich":
        if self.lines is None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.lines is None:
            self.bar.stop()

    def progress(self, task: str, done: int, total: Optional[int], info: str = "") -> None:
        if self.lines is not None:
            self._line(task, done, total, info)
            return
        if task not in self.tasks:
            self.tasks[task] = self.bar.add_task(task, total=total, completed=done, info=info)
            return
        self.bar.update(self.tasks[task], completed=done, total=total, info=info)
        if self.transient and total is not None and done >= total and len(self.tasks) > 1:
            self.bar.remove_task(self.tasks.pop(task))  # a finished sub-task (one metric's features) goes

    def note(self, text: str, level: str = "info") -> None:
        if level == "warning":
            self.console.print(f"[yellow]note:[/yellow] {text}", soft_wrap=True)
        else:
            self.console.print(text, soft_wrap=True)

    def _line(self, task: str, done: int, total: Optional[int], info: str) -> None:
        """A line each time ``task`` passes another tenth of ``total``, once it has run QUIET_S."""
        seen = self.lines.setdefault(task, [time.monotonic(), 0])
        tenths = min(10, 10 * done // total) if total else 0
        if tenths <= seen[1] or time.monotonic() - seen[0] < self.QUIET_S:
            return
        seen[1] = tenths
        print(f"{task}: {done}/{total} ({10 * tenths}%)" + (f"  {info}" if info else ""), file=sys.stderr, flush=True)
