"""Errors a user can act on. Each carries one sentence: what is wrong and what to do.

Only the CLI turns these into a red line and an exit code; the library raises them.
"""


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


class NumericalError(DdpmctlError):
    pass


def format_validation_error(err, what: str) -> str:
    """Turn a pydantic ValidationError into one sentence."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")  # a validator's own sentence, without pydantic's prefix
        if e["type"] == "extra_forbidden":
            msg = "is not a known option"
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{loc}: {msg}")
    return f"invalid {what}: " + "; ".join(parts)
