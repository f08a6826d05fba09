"""What the CLI commands share: the consoles, option parsing, JSON output, Ctrl-C, loading a run.

Like every CLI module, this one imports the library (and torch) only inside the functions that
need it, so that `--help` answers without it."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from ddpmctl.errors import ConfigError

if TYPE_CHECKING:
    from ddpmctl.api import Run

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, '[1,2]' -> [1, 2], 'true' -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: Optional[list[str]], kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]] | dict[str, Any]:
    """Parse repeated ``-o KEY=VALUE`` (or ``KIND.KEY=VALUE`` when ``kinds`` is given)."""
    out: dict = {k: {} for k in kinds} if kinds else {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"option {item!r} is not of the form {'KIND.' if kinds else ''}KEY=VALUE.")
        key, value = item.split("=", 1)
        if kinds:
            if "." not in key or key.split(".", 1)[0] not in kinds:
                raise ConfigError(f"option {item!r} must start with one of {', '.join(k + '.' for k in kinds)} (for example data.noise=0.1).")
            kind, key = key.split(".", 1)
            out[kind][key] = parse_value(value)
        else:
            out[key] = parse_value(value)
    return out


def load_run(path: Path, device: str = "auto", checkpoint: Path | None = None, compile: bool = False, out: Console = console) -> Run:
    """Load a run for sampling, and say (on ``out``) what changed since its checkpoint was written."""
    from ddpmctl.api import Run

    run = Run.load(path, device, checkpoint, compile=compile)
    if run.model.changes:
        out.print(f"[yellow]note:[/yellow] checkpoint of step {run.step} was written with other software: "
                      + "; ".join(run.model.changes) + ".", soft_wrap=True)
    return run


def human(json_: bool) -> Console:
    """Where a command's lines for people go: stdout, or stderr when stdout carries --json."""
    return err_console if json_ else console


def json_safe(obj: Any) -> Any:
    """NaN and inf are not JSON: they become null; paths and other objects become strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def print_json(doc: Any) -> None:
    """The result of a command run with --json: one JSON document on stdout, nothing else there."""
    typer.echo(json.dumps(json_safe(doc), indent=2, allow_nan=False))


@contextlib.contextmanager
def interruptible(what: str):
    """Ctrl-C ends the command as it ends `train`: one line on stderr saying what was left
    (``what``), and exit code 130 (128 + SIGINT), without a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/yellow]: {what}", soft_wrap=True)
        raise typer.Exit(130) from None
