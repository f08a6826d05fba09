"""The CLI's face of ``events.Events``: progress bars, notes and skipped steps drawn with rich."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ddpmctl.events import Events


class Rich(Events):
    """Draws the library's events on ``console``: one bar per task, notes as lines above them.

    Use as a context manager around an API call. ``transient`` bars vanish when done (sampling,
    metrics); training keeps its bar on screen."""

    def __init__(self, console: Console, transient: bool = True):
        self.console = console
        self.transient = transient
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=transient)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "Rich":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def progress(self, task: str, done: int, total: Optional[int], info: str = "") -> None:
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
