"""The ddpmctl command line. Only this package prints, exits, or turns errors into sentences."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from ddpmctl import __version__
from ddpmctl.cli.common import err_console
from ddpmctl.errors import DdpmctlError

app = typer.Typer(
    name="ddpmctl",
    help="Train, sample and evaluate denoising diffusion models, from 2-D toys to 32x32 RGB images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


def _version(value: bool):
    if value:
        typer.echo(f"ddpmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False,
):
    _state["debug"] = debug or os.environ.get("DDPMCTL_DEBUG", "") not in ("", "0")


from ddpmctl.cli import autoencoder as _autoencoder  # noqa: E402
from ddpmctl.cli import bench as _bench  # noqa: E402
from ddpmctl.cli import convergence as _convergence  # noqa: E402
from ddpmctl.cli import data as _data  # noqa: E402
from ddpmctl.cli import distill as _distill  # noqa: E402
from ddpmctl.cli import evaluate as _evaluate  # noqa: E402
from ddpmctl.cli import interpolate as _interpolate  # noqa: E402
from ddpmctl.cli import plugins as _plugins  # noqa: E402
from ddpmctl.cli import sample as _sample  # noqa: E402
from ddpmctl.cli import sweep as _sweep  # noqa: E402
from ddpmctl.cli import train as _train  # noqa: E402

app.add_typer(_data.app, name="data")
app.add_typer(_plugins.app, name="plugins")
app.command("train")(_train.train)
app.command("distill")(_distill.distill)
app.command("sample")(_sample.sample)
app.command("eval")(_evaluate.evaluate)
app.add_typer(_bench.app, name="bench")
app.command("interpolate")(_interpolate.interpolate)
app.command("plot")(_convergence.plot)
app.command("compare")(_convergence.compare)
app.command("sweep")(_sweep.sweep)
app.add_typer(_autoencoder.app, name="autoencoder")


def main() -> None:
    try:
        app()
    except DdpmctlError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
