"""What the CLI commands share: the console, option parsing, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

from ddpmctl.api import Run
from ddpmctl.errors import ConfigError

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


def load_run(path: Path, device: str = "auto", checkpoint: Path | None = None, compile: bool = False) -> Run:
    """Load a run for sampling, and say what changed since its checkpoint was written."""
    run = Run.load(path, device, checkpoint, compile=compile)
    if run.model.changes:
        console.print(f"[yellow]note:[/yellow] checkpoint of step {run.step} was written with other software: "
                      + "; ".join(run.model.changes) + ".", soft_wrap=True)
    return run
