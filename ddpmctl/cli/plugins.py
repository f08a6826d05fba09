"""`ddpmctl plugins list|show`: what is registered, from which distribution, and its options."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from ddpmctl import registry
from ddpmctl.cli.common import console
from ddpmctl.errors import UnknownNameError

app = typer.Typer(help="List registered plugins and show their options.", no_args_is_help=True)


@app.command("list")
def list_(kind: Annotated[Optional[str], typer.Option(help="Only this kind: dataset, network, schedule, process, sampler, metric, method or autoencoder.")] = None):
    """List every plugin of every kind, with its distribution, version and whether it loads."""
    kinds = [_check_kind(kind)] if kind else list(registry.KINDS)
    table = Table(title="ddpmctl plugins")
    for col in ("kind", "name", "distribution", "version", "status"):
        table.add_column(col)
    broken = 0
    for k in kinds:
        for st in registry.status(k):
            e = st.entry
            status = "[green]ok[/green]" if st.ok else f"[red]broken[/red]: {st.error}"
            broken += not st.ok
            table.add_row(k, e.name, e.dist, e.version, status)
    console.print(table)
    if broken:
        console.print(f"[yellow]{broken} plugin(s) are broken; the others work. Reinstall or fix the named distribution.[/yellow]")


def _check_kind(kind: str) -> str:
    if kind not in registry.KINDS:
        raise UnknownNameError(f"unknown plugin kind {kind!r}; known kinds: {', '.join(registry.KINDS)}.")
    return kind


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Plugin name, for example spiral or ddpm.")],
    kind: Annotated[Optional[str], typer.Option(help="The kind, when the name is used by several kinds.")] = None,
):
    """Print a plugin's description and its options with types, defaults and help."""
    kinds = [_check_kind(kind)] if kind else [k for k in registry.KINDS if name in registry.names(k)]
    if not kinds:
        known = ", ".join(sorted({n for k in registry.KINDS for n in registry.names(k)}))
        raise UnknownNameError(f"no plugin is named {name!r}; known names: {known}.")
    for k in kinds:
        e = registry.entry(k, name)
        obj = registry.load(k, name)
        console.print(f"[bold]{name}[/bold] ({k}) from {e.dist} {e.version}: {e.value}")
        doc = (obj.__doc__ or "").strip()
        if doc:
            console.print(doc)
        table = Table()
        for col in ("option", "type", "default", "help"):
            table.add_column(col)
        for field_name, f in obj.Options.model_fields.items():
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
            table.add_row(field_name, ann, repr(f.default), f.description or "")
        if obj.Options.model_fields:
            console.print(table)
        else:
            console.print("(no options)")
