"""Plugin registries resolved through Python entry points.

Nine groups: ``ddpmctl.datasets``, ``ddpmctl.networks``, ``ddpmctl.schedules``,
``ddpmctl.processes``, ``ddpmctl.samplers``, ``ddpmctl.metrics``, ``ddpmctl.methods``,
``ddpmctl.autoencoders`` and ``ddpmctl.trackers``. The built-ins are declared in ddpmctl's own
pyproject exactly as a third party declares theirs. Nothing is imported until a name is
resolved, and then only that plugin; a plugin that fails to import is reported as broken
and leaves the others working.

Every plugin object carries ``Options``, a pydantic model (unknown keys forbidden) that
describes and validates its keyword options before any heavy work starts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ddpmctl.errors import OptionsError, PluginError, UnknownNameError, format_validation_error

KINDS = {
    "dataset": "ddpmctl.datasets",
    "network": "ddpmctl.networks",
    "schedule": "ddpmctl.schedules",
    "process": "ddpmctl.processes",
    "sampler": "ddpmctl.samplers",
    "metric": "ddpmctl.metrics",
    "method": "ddpmctl.methods",
    "autoencoder": "ddpmctl.autoencoders",
    "tracker": "ddpmctl.trackers",
}


class PluginOptions(BaseModel):
    """Base for plugin options: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class NoOptions(PluginOptions):
    pass


def with_options(options: type[BaseModel]):
    """Attach an options model to a plugin function: ``@with_options(DDPMOptions)``."""

    def attach(fn):
        fn.Options = options
        return fn

    return attach


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    value: str  # "module:attr"
    dist: str
    version: str

    @property
    def module(self) -> str:
        return self.value.split(":")[0]


@functools.cache
def _entries(kind: str) -> tuple[tuple[str, tuple[Entry, ...]], ...]:
    group = KINDS[kind]
    found: dict[str, dict[str, Entry]] = {}
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        entry = Entry(
            kind=kind,
            name=ep.name,
            value=ep.value,
            dist=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
        # The same distribution may be visible twice on sys.path (an editable install and
        # its source tree); keep one entry per (name, target).
        found.setdefault(ep.name, {}).setdefault(ep.value, entry)
    return tuple(sorted((name, tuple(v.values())) for name, v in found.items()))


def names(kind: str) -> list[str]:
    """The registered names of one kind, without importing any plugin."""
    return [name for name, _ in _entries(kind)]


def entries(kind: str) -> list[Entry]:
    return [e for _, group in _entries(kind) for e in group]


def entry(kind: str, name: str) -> Entry:
    groups = dict(_entries(kind))
    if name not in groups:
        known = ", ".join(names(kind)) or "(none)"
        raise UnknownNameError(f"unknown {kind} {name!r}; known {kind}s: {known}.")
    candidates = groups[name]
    if len(candidates) > 1:
        who = " and ".join(f"{e.dist} {e.version} ({e.value})" for e in candidates)
        raise PluginError(
            f"{kind} {name!r} is registered twice, by {who}; uninstall one of them."
        )
    return candidates[0]


@functools.cache
def load(kind: str, name: str) -> Any:
    """Import and return the plugin object registered as ``name``; only that module is imported."""
    e = entry(kind, name)
    ep = metadata.EntryPoint(name=e.name, value=e.value, group=KINDS[kind])
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not take the others down
        raise PluginError(
            f"{kind} {name!r} from {e.dist} {e.version} failed to import "
            f"({type(exc).__name__}: {exc}); reinstall or fix that package."
        ) from exc
    options = getattr(obj, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise PluginError(
            f"{kind} {name!r} from {e.dist} has no pydantic `Options` model; "
            "see docs/plugins.md for the plugin interface."
        )
    return obj


def validate_options(kind: str, name: str, raw: dict[str, Any] | None) -> BaseModel:
    """Validate ``raw`` against the plugin's options model; one sentence on failure."""
    obj = load(kind, name)
    try:
        return obj.Options(**_match_case(obj.Options, raw or {}))
    except ValidationError as err:
        raise OptionsError(
            format_validation_error(err, f"options for {kind} {name!r}")
            + f"; see `ddpmctl plugins show {name}`."
        ) from None


def _match_case(options: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    """Environment variables reach us lower-cased (DDPMCTL_SCHEDULE_OPTIONS__T=500 gives t):
    a key that is unknown as written but names exactly one option up to case is that option."""
    fields = options.model_fields
    out = {}
    for key, value in raw.items():
        same = [f for f in fields if f.lower() == key.lower()]
        out[same[0] if key not in fields and len(same) == 1 else key] = value
    return out


def resolve(kind: str, name: str, raw: dict[str, Any] | None = None) -> tuple[Any, BaseModel]:
    """Return (plugin object, validated options)."""
    return load(kind, name), validate_options(kind, name, raw)


def build(kind: str, name: str, raw: dict[str, Any] | None = None, **context: Any) -> Any:
    """Resolve, validate and call the plugin with its options (and the kind's context)."""
    obj, opts = resolve(kind, name, raw)
    return obj(**opts.model_dump(), **context)


@dataclass
class Status:
    entry: Entry
    ok: bool
    error: str = ""
    summary: str = ""


def status(kind: str) -> list[Status]:
    """Import every plugin of a kind to report which work (for `ddpmctl plugins list`)."""
    out = []
    for _name, group in _entries(kind):
        for e in group:
            if len(group) > 1:
                out.append(Status(e, False, f"name clash with {len(group) - 1} other distribution(s)"))
                continue
            try:
                obj = load(kind, e.name)
            except PluginError as exc:
                cause = exc.__cause__
                msg = f"{type(cause).__name__}: {cause}" if cause else str(exc)
                out.append(Status(e, False, msg))
                continue
            doc = (obj.__doc__ or "").strip().splitlines()
            out.append(Status(e, True, summary=doc[0] if doc else ""))
    return out


def clear_cache() -> None:
    """Forget discovered entry points (after installing a plugin at run time, in tests)."""
    _entries.cache_clear()
    load.cache_clear()
