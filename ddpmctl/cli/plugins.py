"""`ddpmctl plugins list|show`: what is registered, from which distribution, and its options."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Optional

import typer
from pydantic.fields import FieldInfo
from rich.table import Table

from ddpmctl import registry
from ddpmctl.cli.common import human, print_json
from ddpmctl.cli.face import Command, sub_app
from ddpmctl.errors import UnknownNameError

app = sub_app("List registered plugins and show their options.")
JSON_HELP = "Print the result as one JSON document on stdout."


@app.command("list", cls=Command)
def list_(
    kind: Annotated[Optional[str], typer.Option(help=f"Only this kind: {', '.join(registry.KINDS)}.")] = None,
    json_: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
):
    """List every plugin of every kind, with its distribution, version and whether it loads."""
    console = human(json_)
    kinds = [_check_kind(kind)] if kind else list(registry.KINDS)
    table = Table(title="ddpmctl plugins")
    for col in ("kind", "name", "distribution", "version", "status"):
        table.add_column(col)
    rows = []
    for k in kinds:
        for st in registry.status(k):
            e = st.entry
            rows.append({"kind": k, "name": e.name, "distribution": e.dist, "version": e.version, "entry_point": e.value,
                         "ok": st.ok, "error": st.error or None, "summary": st.summary})
            table.add_row(k, e.name, e.dist, e.version, "[green]ok[/green]" if st.ok else f"[red]broken[/red]: {st.error}")
    broken = sum(not r["ok"] for r in rows)
    if json_:
        print_json({"plugins": rows})
    else:
        console.print(table)
    if broken:
        console.print(f"[yellow]{broken} plugin(s) are broken; the others work. Reinstall or fix the named distribution.[/yellow]")


def _check_kind(kind: str) -> str:
    if kind not in registry.KINDS:
        raise UnknownNameError(f"unknown plugin kind {kind!r}; known kinds: {', '.join(registry.KINDS)}.")
    return kind


@app.command("show", cls=Command)
def show(
    name: Annotated[str, typer.Argument(help="Plugin name, for example spiral or ddpm.")],
    kind: Annotated[Optional[str], typer.Option(help="The kind, when the name is used by several kinds.")] = None,
    json_: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
):
    """Print a plugin's description and its options with types, defaults and help."""
    console = human(json_)
    kinds = [_check_kind(kind)] if kind else [k for k in registry.KINDS if name in registry.names(k)]
    if not kinds:
        known = ", ".join(sorted({n for k in registry.KINDS for n in registry.names(k)}))
        raise UnknownNameError(f"no plugin is named {name!r}; known names: {known}.")
    found = []
    for k in kinds:
        e = registry.entry(k, name)
        obj = registry.load(k, name)
        options = [{"name": field_name, **describe(f)} for field_name, f in obj.Options.model_fields.items()]
        found.append({"kind": k, "name": name, "distribution": e.dist, "version": e.version, "entry_point": e.value,
                      "description": inspect.cleandoc(obj.__doc__ or ""), "options": options})
    if json_:
        print_json({"plugins": found})
        return
    for p in found:
        console.print(f"[bold]{name}[/bold] ({p['kind']}) from {p['distribution']} {p['version']}: {p['entry_point']}")
        if p["description"]:
            console.print(p["description"])
        table = Table()
        for col in ("option", "type", "default", "help"):
            table.add_column(col)
        for o in p["options"]:
            table.add_row(o["name"], o["type"], "required" if o["required"] else repr(o["default"]), o["help"])
        console.print(table if p["options"] else "(no options)")


def describe(f: FieldInfo) -> dict[str, Any]:
    """An option's type in words, its default (none when required) and its help."""
    required = f.is_required()
    default = None if required else f.get_default(call_default_factory=True)
    return {"type": type_words(f.annotation), "required": required, "default": default, "help": f.description or ""}


def type_words(ann: Any) -> str:
    """``Literal['a', 'b']`` -> "one of: a, b"; ``Optional[int]`` -> "int or none";
    ``list[float]`` -> "list of float"; ``tuple[int, ...]`` -> "tuple of int"."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_words(args[0])
    if origin in (typing.Union, types.UnionType):
        kept = [type_words(a) for a in args if a is not type(None)]
        return " or ".join(kept + (["none"] if len(kept) < len(args) else []))
    if origin in (list, tuple, set, frozenset):
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(inner) > 1:
            return "tuple of (" + ", ".join(type_words(a) for a in inner) + ")"
        return f"{origin.__name__} of {type_words(inner[0])}" if inner else origin.__name__
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")
