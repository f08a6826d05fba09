"""Generated reference pages: docs/config.md from ``TrainSettings``, docs/cli.md from the Typer app,
docs/api.md from the Python API's docstrings.

Both pages are rebuilt from the code, so they cannot drift from it; ``tests/test_docs.py``
fails when a committed page differs from what these functions produce. Regenerate with:

    UPDATE_DOCS=1 pytest tests/test_docs.py
"""

from __future__ import annotations

import inspect
import re
import textwrap
import typing
from pathlib import Path
from typing import Any

from ddpmctl import api, config, events, record, samples
from ddpmctl.cli import app
from ddpmctl.datasets import base as dataset_base
from ddpmctl.metrics import base as metric_base

REGENERATE = "UPDATE_DOCS=1 pytest tests/test_docs.py"


def _cell(text: Any) -> str:
    """Text made safe for one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: Any) -> str:
    return f"`{text}`" if str(text) else ""


# ---------------------------------------------------------------------------------------------
# docs/config.md


def _type_name(annotation: Any) -> str:
    """A short, readable name of a settings field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        names = [_type_name(a) for a in args if a is not type(None)]
        optional = type(None) in args
        return " or ".join(names) + (" (or unset)" if optional else "")
    if origin is dict:
        return "table"
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return "path"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _bounds(field) -> str:
    """Constraints such as >= 1, < 1 from a pydantic field's metadata."""
    out = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sign} {value}")
    return ", ".join(out)


def _default(name: str, field, phase_defaults: dict[str, dict]) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "`{}` (empty)" if value == {} else _code(value)
    value = field.default
    if value is None:
        by_phase = [f"{kind}: `{d[name]}`" for kind, d in phase_defaults.items() if name in d]
        return "by phase (" + ", ".join(by_phase) + ")" if by_phase else "unset"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        value = str(value).lower()
    return _code(value)


def _train_flags() -> dict[str, str]:
    """Setting name -> the `ddpmctl train` flag that sets it (when there is one)."""
    import typer.main

    group = typer.main.get_command(app)
    train = group.commands.get("train")
    flags = {}
    for p in getattr(train, "params", []):
        if p.param_type_name == "option" and p.opts:
            flags[p.name] = "/".join(p.opts[:1] + list(p.secondary_opts))
    return flags


def config_reference() -> str:
    """docs/config.md: every setting of ``ddpmctl train`` with its type, default, environment
    variable, TOML key and flag, read from ``ddpmctl.config.TrainSettings``."""
    fields = config.TrainSettings.model_fields
    flags = _train_flags()
    prefix = config.ENV_PREFIX
    lines = [
        "# Configuration reference",
        "",
        f"Generated from `ddpmctl.config.TrainSettings` by `ddpmctl/docsgen.py` (regenerate: `{REGENERATE}`).",
        "",
        "`ddpmctl train` reads its settings in layers, each overriding the one before:",
        "",
        "1. the defaults below;",
        "2. a TOML file given with `--config FILE` (top-level keys, plugin options as tables);",
        f"3. environment variables `{prefix}<KEY>`, with `__` reaching into the option tables",
        f"   (`{prefix}NETWORK_OPTIONS__WIDTH=64`). Variable names are case-insensitive; the key",
        "   after `__` arrives in lower case and is matched to the plugin's option of that name up to",
        f"   case (`{prefix}SCHEDULE_OPTIONS__T=500` sets `T`). A whole table may also be given as JSON:",
        f"   `{prefix}SCHEDULE_OPTIONS='{{\"T\": 500}}'`;",
        "4. command-line flags, and `-o KIND.KEY=VALUE` for plugin options (`-o network.width=64`).",
        "",
        "Unknown keys are refused wherever they come from: a misspelt TOML key, an unknown",
        f"`{prefix}*` variable or an unknown plugin option stops the command with one sentence",
        "(see [errors.md](errors.md)). A default marked *by phase* is filled in once the dataset",
        "is known, from `ddpmctl.config.PHASE_DEFAULTS`: *points* for 2-D data, *images* for images.",
        "The resolved settings are saved in `runs/<name>/config.json`; `train --resume` reuses them,",
        "and only " + ", ".join(f"`{k}`" for k in sorted(config.RESUMABLE)) + " may change on resume.",
        "",
        "| setting (TOML key) | type | default | environment variable | flag | description |",
        "|---|---|---|---|---|---|",
    ]
    for name, field in fields.items():
        ann = field.annotation
        is_table = typing.get_origin(ann) is dict or ann is dict
        env = f"{prefix}{name.upper()}" + ("__KEY" if is_table else "")
        key = f"[{name}]" if is_table else name
        flag = flags.get(name, "")
        if is_table and name.endswith("_options"):
            kind = {"data": "data", "network": "network", "schedule": "schedule", "tracker": "tracker"}.get(name[: -len("_options")])
            flag = f"-o {kind}.KEY=VALUE" if kind else flag
        typ = _type_name(ann)
        bounds = _bounds(field)
        if bounds:
            typ += f", {bounds}"
        lines.append(
            f"| `{key}` | {_cell(typ)} | {_cell(_default(name, field, config.PHASE_DEFAULTS))} | `{env}` | "
            f"{_code(flag) if flag else '—'} | {_cell(field.description or '')} |"
        )
    lines += [
        "",
        "Variables read outside the settings: "
        + ", ".join(f"`{v}`" for v in sorted(config.GLOBAL_ENV))
        + f" (`{prefix}DATA_DIR` is where datasets are stored, default `~/.cache/ddpmctl/data`;",
        f"`{prefix}DEBUG=1` shows the traceback of an error, as `--debug` does).",
        "",
        "A TOML file holds the same keys; plugin options go in tables named after the setting:",
        "",
        "```toml",
        'data = "spiral"',
        "steps = 4000",
        'lr_decay = "cosine"',
        "",
        "[data_options]",
        "noise = 0.1",
        "",
        "[network_options]",
        "width = 256",
        "",
        "[schedule_options]",
        "T = 500",
        "```",
        "",
        "The options of each plugin (their names, types, defaults and help) are listed by",
        "`ddpmctl plugins show NAME`; the example configs of each phase are in `examples/`.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# docs/cli.md


def _param_type(p, ctx) -> str:
    try:
        shown = p.display_type(ctx)  # Typer's own label, e.g. <int range>
    except Exception:  # another Typer version: fall back to the click type's name
        shown = getattr(getattr(p, "type", None), "name", "") or ""
    shown = (shown or "").strip("<>").replace(" range", "")
    if shown == "bool":
        return "flag"
    if getattr(p, "multiple", False) and shown.startswith("list[") and shown.endswith("]"):
        shown = shown[len("list["):-1] + ", repeatable"
    lo, hi = getattr(p, "min", None), getattr(p, "max", None)
    if lo is not None and hi is not None:
        shown += f" in [{lo}, {hi}]"
    elif lo is not None:
        shown += f" >= {lo}"
    elif hi is not None:
        shown += f" <= {hi}"
    return shown


def _param_default(p) -> str:
    if getattr(p, "required", False):
        return "required"
    value = p.default
    if value is None or value == [] or callable(value):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value)
    return _code(value)


def _param_name(p) -> str:
    if p.param_type_name == "argument":
        return (p.metavar or p.name).upper()
    return " / ".join(list(p.opts) + list(getattr(p, "secondary_opts", [])))


def _usage(cmd, ctx) -> str:
    text = " ".join(cmd.get_usage(ctx).split()).removeprefix("Usage: ")
    return re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), text)  # Typer's {run} is RUN


def _commands(cmd, ctx, path: list[str]) -> list[tuple[list[str], Any, Any]]:
    """Every command and group under ``cmd``, depth first, in the order `--help` lists them."""
    out = [(path, cmd, ctx)]
    sub = getattr(cmd, "commands", None)
    if sub:
        for name in cmd.list_commands(ctx):
            child = cmd.get_command(ctx, name)
            if child is None or getattr(child, "hidden", False):
                continue
            child_ctx = child.make_context(name, [], parent=ctx, resilient_parsing=True)
            out += _commands(child_ctx.command, child_ctx, path + [name])  # the command itself, not the root's placeholder
    return out


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def cli_reference() -> str:
    """docs/cli.md: every command and group of ``ddpmctl.cli.app`` with its arguments and options."""
    import typer.main

    root = typer.main.get_command(app)
    root_ctx = root.make_context("ddpmctl", [], resilient_parsing=True)
    lines = [
        "# Command-line reference",
        "",
        f"Generated from the Typer app `ddpmctl.cli.app` by `ddpmctl/docsgen.py` (regenerate: `{REGENERATE}`).",
        "Every command also takes `--help` (or `-h`). A user error ends with one red sentence and exit code 1",
        "(2 for a usage error found by the parser); [errors.md](errors.md) lists them; Ctrl-C ends a command",
        "with one line and exit code 130. Settings of `train` can also come from a TOML file and the",
        "environment: see [config.md](config.md). `--json`, where a command has it, prints one JSON document",
        "on stdout (notes and progress go to stderr). Shell completion for bash and zsh:",
        "`ddpmctl --install-completion` (README.md, \"In a shell and in scripts\").",
        "",
    ]
    entries = _commands(root, root_ctx, ["ddpmctl"])
    # A table of contents: one line per command.
    for path, cmd, _ in entries[1:]:
        if getattr(cmd, "commands", None):
            continue
        anchor = "-".join(path).replace("+", "")
        lines.append(f"- [`{' '.join(path)}`](#{anchor}): {_cell(_first_paragraph(cmd.help))}")
    lines.append("")
    for path, cmd, ctx in entries:
        is_group = bool(getattr(cmd, "commands", None))
        title = " ".join(path)
        lines += [f"## {title}" if len(path) > 1 else "## ddpmctl (global options)", ""]
        if cmd.help:
            lines += [" ".join(cmd.help.split()), ""]
        lines += [f"    {_usage(cmd, ctx)}", ""]
        if is_group:
            subs = [n for n in cmd.list_commands(ctx) if not getattr(cmd.get_command(ctx, n), "hidden", False)]
            lines += ["Commands: " + ", ".join(f"`{title} {n}`" for n in subs) + ".", ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        if params:
            lines += ["| argument / option | type | default | description |", "|---|---|---|---|"]
            for p in params:
                lines.append(f"| `{_param_name(p)}` | {_cell(_param_type(p, ctx))} | {_cell(_param_default(p))} | {_cell(p.help or '')} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# docs/api.md

API_OBJECTS = [  # (name shown, object): what `import ddpmctl` hands out, and what it returns
    ("ddpmctl.train", api.train), ("ddpmctl.distill", api.distill), ("ddpmctl.sweep", api.sweep), ("ddpmctl.load_dataset", api.load_dataset), ("ddpmctl.Run", api.Run),
    ("ddpmctl.Evaluation", api.Evaluation), ("ddpmctl.Samples", samples.Samples), ("ddpmctl.Events", events.Events),
    ("ddpmctl.Printer", events.Printer), ("ddpmctl.RunRecord", record.RunRecord), ("ddpmctl.record.DataInfo", record.DataInfo),
    ("ddpmctl.metrics.base.MetricResult", metric_base.MetricResult), ("ddpmctl.datasets.base.Dataset", dataset_base.Dataset),
]


def _signature(obj) -> str:
    """``(a: int = 1, *, b: str = 'x') -> T`` with annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "()"

    def ann(a) -> str:
        return a if isinstance(a, str) else getattr(a, "__name__", str(a).replace("typing.", ""))

    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind is p.VAR_POSITIONAL:
            star = True
        if p.annotation is not p.empty:
            text += f": {ann(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    out = f"({', '.join(parts)})"
    return out + (f" -> {ann(sig.return_annotation)}" if sig.return_annotation is not sig.empty else "")


def _doc(obj) -> list[str]:
    text = inspect.getdoc(obj) or ""
    return [text, ""] if text else []


def _members(cls) -> list[str]:
    """Public methods and properties defined on ``cls`` itself, in source order."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            out += [f"- `{cls.__name__}.{name}`: {_first_paragraph(value.__doc__)}"]
        elif callable(value) or isinstance(value, (classmethod, staticmethod)):
            fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
            out += ["", f"#### `{cls.__name__}.{name}{_signature(fn).replace('(self, ', '(').replace('(self)', '()').replace('(cls, ', '(')}`", "", *_doc(fn)]
    return out


def api_reference() -> str:
    """docs/api.md: the Python API, from the signatures and docstrings of ``ddpmctl.api`` and the
    objects it returns."""
    paragraphs = inspect.getdoc(api).split("\n\n")[1:]
    code = [p for p in paragraphs if all(line.startswith("    ") for line in p.splitlines())]
    lines = [
        "# Python API reference",
        "",
        f"Generated from the docstrings of `ddpmctl/api.py` and the objects it returns by `ddpmctl/docsgen.py` (regenerate: `{REGENERATE}`).",
        "A walk through it: [examples/notebooks/phase1-2d-api.ipynb](../examples/notebooks/phase1-2d-api.ipynb).",
        "",
        "```python",
        *"\n\n".join(textwrap.dedent(p) for p in code).splitlines(),
        "```",
        "",
    ]
    for p in paragraphs:
        if p not in code:
            lines += [" ".join(p.split()), ""]
    for shown, obj in API_OBJECTS:
        kind = "class" if inspect.isclass(obj) else "function"
        lines += [f"## `{shown}`", "", f"{kind} `{shown.rsplit('.', 1)[-1]}{_signature(obj)}`", "", *_doc(obj)]
        if inspect.isclass(obj):
            lines += _members(obj) + [""]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"
