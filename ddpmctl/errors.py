"""Errors a user can act on. Each carries one sentence: what is wrong and what to do.

Only the CLI turns these into a red line and an exit code; the library raises them.
"""

from __future__ import annotations

from typing import Callable, Optional


class DdpmctlError(Exception):
    """A failure caused by the user's input or environment, explained in one sentence."""

    exit_code = 1


class UnknownNameError(DdpmctlError):
    pass


class PluginError(DdpmctlError):
    pass


class OptionsError(DdpmctlError):
    pass


class ConfigError(DdpmctlError):
    pass


class RunError(DdpmctlError):
    pass


class CheckpointError(DdpmctlError):
    pass


class DataError(DdpmctlError):
    pass


class WriteError(DdpmctlError):
    """A file could not be written: a full disk, a read-only folder, no permission."""


class NumericalError(DdpmctlError):
    pass


def format_validation_error(err, what: str, origin: Optional[Callable[[str], Optional[str]]] = None) -> str:
    """Turn a pydantic ValidationError into one sentence; ``origin(field)`` names where a value came
    from when that is not the command line (an environment variable)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        source = origin(str(e["loc"][0])) if origin is not None and e["loc"] else None
        loc = f"{loc} (from {source})" if source else loc
        msg = e["msg"].removeprefix("Value error, ")  # a validator's own sentence, without pydantic's prefix
        if e["type"] == "extra_forbidden":
            msg = "is not a known option"
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{loc}: {msg}")
    return f"invalid {what}: " + "; ".join(parts)
