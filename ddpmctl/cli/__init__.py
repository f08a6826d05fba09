"""The ddpmctl command line. Only this package prints, exits, or turns errors into sentences.

The root group lists its commands from ``COMMANDS`` and imports a command's module only when that
command runs or shows its help: `ddpmctl --help`, `--version` and shell completion start without
torch, and every command module imports the library (and torch) inside the command that needs it."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ddpmctl import __version__
from ddpmctl.cli.common import err_console
from ddpmctl.cli.face import HELP_OPTIONS, LazyGroup
from ddpmctl.errors import DdpmctlError

# name -> (module:attribute, the one line `ddpmctl --help` shows: the first paragraph of its help,
# which tests/test_cli_face.py checks)
COMMANDS = {
    "train": ("ddpmctl.cli.train:train", "Train a diffusion model; writes runs/<name>/ with config, checkpoints, metrics and plots."),
    "distill": ("ddpmctl.cli.distill:distill", "Distill a trained run into a one- or two-step model; writes a new run (sample it with `ddpmctl sample NEW --steps 1`)."),
    "sample": ("ddpmctl.cli.sample:sample", "Sample from a run's EMA weights; writes samples (.npz) and a PNG of them over the data."),
    "eval": ("ddpmctl.cli.evaluate:evaluate", "Compute metrics between a run's samples and real data; saves JSON in RUN/eval/."),
    "interpolate": ("ddpmctl.cli.interpolate:interpolate", "Interpolate between two seeds (slerp of x_T) or two real examples (DDIM inversion, slerp, decode)."),
    "plot": ("ddpmctl.cli.convergence:plot", "Draw a run's loss.png, convergence.png (loss and quality against steps and wall time) and samples-over-training.png again from its metrics.jsonl."),
    "compare": ("ddpmctl.cli.convergence:compare", "Overlay the loss and quality curves of several runs (against steps and wall time) and tabulate final loss, final quality, and the steps and wall time each took to reach --quality."),
    "sweep": ("ddpmctl.cli.sweep:sweep", "Train one run per combination of the --grid values, the same evaluation for every run, and compare them. Run the same command again to resume: finished cells are not run again."),
    "data": ("ddpmctl.cli.data:app", "Fetch and look at datasets."),
    "plugins": ("ddpmctl.cli.plugins:app", "List registered plugins and show their options."),
    "bench": ("ddpmctl.cli.bench:app", "Benchmark samplers (quality) and the default networks (speed)."),
    "autoencoder": ("ddpmctl.cli.autoencoder:app", "Autoencoders for latent diffusion (Rombach et al. 2022): train one, then `ddpmctl train --latent DIR`."),
}


class Root(LazyGroup):
    COMMANDS = COMMANDS

    def invoke(self, ctx):
        """Ctrl-C in a command that does not handle it itself: one line and exit code 130."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            err_console.print("[yellow]interrupted[/yellow]; the command stopped before it finished.")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="ddpmctl",
    help="Train, sample and evaluate denoising diffusion models, from 2-D toys to 32x32 RGB images.",
    cls=Root,
    context_settings=HELP_OPTIONS,
    no_args_is_help=True,
    add_completion=True,
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


def main() -> None:
    try:
        app(prog_name="ddpmctl")
    except DdpmctlError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)  # a message's [brackets] are text, not markup
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
