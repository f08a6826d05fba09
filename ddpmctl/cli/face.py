"""How the command line looks and starts: help in two columns that stay readable at 80 columns,
and a root group that knows its commands by name and one line each, and imports a command's
module only when that command runs or shows its own help (so `ddpmctl --help` and `--version`
answer without importing torch)."""

from __future__ import annotations

import importlib
import re
import shutil
from typing import Any

import typer
import typer.main
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

HELP_OPTIONS = {"help_option_names": ["--help", "-h"]}


def usage_pieces(pieces: list[str]) -> list[str]:
    """Typer writes an argument ``run`` as ``{run}`` (``[run]`` when optional) in the usage line;
    the convention is RUN ([RUN])."""
    pieces = [re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), p) for p in pieces]
    return [re.sub(r"\[([a-z_]+)\]", lambda m: f"[{m.group(1).upper()}]", p) for p in pieces]


class Command(TyperCommand):
    """A command whose help is drawn by `print_help`."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return usage_pieces(super().collect_usage_pieces(ctx))

    def format_help(self, ctx, formatter) -> None:
        print_help(self, ctx)


class Group(TyperGroup):
    """A group of commands whose help is drawn by `print_help`."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return usage_pieces(super().collect_usage_pieces(ctx))

    def format_help(self, ctx, formatter) -> None:
        print_help(self, ctx)


def sub_app(help: str) -> typer.Typer:
    """A command group such as `ddpmctl bench`; give its commands ``cls=Command``."""
    return typer.Typer(help=help, no_args_is_help=True, cls=Group, add_completion=False, rich_markup_mode="rich")


def load(target: str, name: str):
    """The click command of ``module:attribute``: a Typer group, or a function made one command."""
    module, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_command(obj)
    else:
        one = typer.Typer(add_completion=False, rich_markup_mode="rich")
        one.command(name, cls=Command)(obj)
        cmd = typer.main.get_command(one)
    cmd.name = name
    return cmd


class LazyCommand(TyperCommand):
    """A command known by its name and one line of help until it runs or shows its help; then
    its module is imported and the real command takes over (``make_context`` hands it over)."""

    def __init__(self, name: str, target: str, short_help: str):
        super().__init__(name, help=short_help, short_help=short_help, add_help_option=False)
        self.target = target
        self._loaded = None

    def load(self):
        if self._loaded is None:
            self._loaded = load(self.target, self.name)
        return self._loaded

    def make_context(self, info_name, args, parent=None, **extra):
        return self.load().make_context(info_name, args, parent=parent, **extra)


class LazyGroup(Group):
    """The root group: its commands come from ``COMMANDS`` (name -> (module:attribute, one line)),
    set on a subclass, as `LazyCommand` placeholders."""

    COMMANDS: dict[str, tuple[str, str]] = {}

    def __init__(self, **attrs: Any):
        super().__init__(**attrs)
        for name, (target, short_help) in self.COMMANDS.items():
            self.add_command(LazyCommand(name, target, short_help), name)


# ---------------------------------------------------------------------------------------------
# Help


def print_help(cmd, ctx) -> None:
    """Usage, description, then panels of arguments, options and commands, each a table of two
    columns: names (at most a third of the width, wrapped at spaces) and the help beside them."""
    width = shutil.get_terminal_size((80, 24)).columns
    console = Console(width=width, highlight=False, soft_wrap=False)
    console.print(Text.assemble(("Usage: ", "bold"), f"{ctx.command_path} {' '.join(cmd.collect_usage_pieces(ctx))}"))
    for paragraph in (cmd.help or "").split("\n\n"):
        if paragraph.strip():
            console.print()
            console.print(Text(" ".join(paragraph.split())))
    console.print()
    arguments, options = [], []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append((param.name.upper() + ("..." if param.nargs != 1 else ""), record[1]))
        else:  # <int range> is <int> (the range is in the help), <list[str]> of a repeatable option <str>...
            options.append((re.sub(r"<list\[(\w+)\]>", r"<\1>...", re.sub(r"<(\w+) range>", r"<\1>", record[0])), record[1]))
    commands = []
    if isinstance(cmd, TyperGroup):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                commands.append((name, first_line(sub)))
    for title, rows in (("Arguments", arguments), ("Options", options), ("Commands", commands)):
        if rows:
            console.print(_panel(title, rows, width))


def _panel(title: str, rows: list[tuple[str, str]], width: int) -> Panel:
    names = max(len(n) for n, _ in rows)
    table = Table.grid(padding=(0, 2))
    table.add_column(max_width=min(names, max(14, (width - 4) // 3)))
    table.add_column(ratio=1)
    for name, text in rows:
        left = Text(name, style="bold cyan")
        left.highlight_regex(r"<[^>]+>", "yellow")
        table.add_row(left, Text(" ".join(text.split())))
    return Panel(table, title=title, title_align="left", border_style="dim", expand=True)


def first_line(cmd) -> str:
    """The one line a group lists for a command: its short help, or its help's first paragraph."""
    return " ".join((cmd.short_help or (cmd.help or "").split("\n\n")[0]).split())
