"""`ddpmctl sweep`: train a grid over settings, one run per cell (sweeps.py), several cells at once,
resumable, and end with the `compare` table and plot over every cell."""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ddpmctl.cli.common import console, parse_value
from ddpmctl.cli.convergence import compare
from ddpmctl.cli.render import Rich
from ddpmctl.cli.train import signals
from ddpmctl.errors import ConfigError, OptionsError
from ddpmctl.stopping import Threshold


def sweep(
    name: Annotated[str, typer.Option(help="Sweep name: its runs, logs, sweep.json and compare.png go in RUNS_DIR/NAME/.")],
    grid: Annotated[list[str], typer.Option(help="KEY=V1,V2,...: a setting (lr, steps, network, schedule, ...) or a plugin option KIND.KEY (network.width, schedule.T, data.n) and its values; repeatable: one run per combination.")],
    parallel: Annotated[int, typer.Option(min=1, help="Cells trained at once; each gets cores / K torch threads.")] = 1,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Where the sweep's folder is made (default: the runs_dir setting, runs).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Dataset plugin of every cell.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training iterations of every cell.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate every cell every N steps, the same way (default 500; 0: never).")] = None,
    eval_metric: Annotated[Optional[str], typer.Option(help="Metric of the evaluations (default: wasserstein for 2-D, classifier-fid for 1-channel images, else fid).")] = None,
    eval_n: Annotated[Optional[int], typer.Option(help="Samples per evaluation (default: 500 for 2-D, 256 for images).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--set", "-o", help="KEY=VALUE shared by every cell, KEY as in --grid (repeatable), e.g. --set batch_size=256 --set network.depth=2.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings shared by every cell (below env and flags).")] = None,
    quality: Annotated[Optional[str], typer.Option(help="Threshold NAME<=X or NAME>=X for the compare table: steps and wall time each cell took to reach it.")] = None,
):
    """Train one run per combination of the --grid values, the same evaluation for every run, and
    compare them. Run the same command again to resume: finished cells are not run again."""
    from ddpmctl import sweeps

    if quality is not None:
        try:
            Threshold.parse(quality)
        except ValueError as exc:
            raise OptionsError(f"--quality {quality!r} is {exc}.") from None
    explicit = dict(data=data, steps=steps, eval_every=eval_every, eval_metric=eval_metric, eval_n=eval_n)
    common = {**sweeps.settings_of(parse_pairs(option), "--set"), **{k: v for k, v in explicit.items() if v is not None}}
    plan = sweeps.plan(name, parse_grid(grid), runs_dir, config, **common)
    sweeps.write(plan)
    shape = " x ".join(f"{len(v)} {k}" for k, v in plan.grid.items())
    console.print(f"[bold]sweep[/bold] {plan.folder}: {len(plan.cells)} cells ({shape}), at most {parallel} at a time")
    with signals() as caught, Rich(console, transient=False) as events:
        outcome = sweeps.run(plan, parallel, events, stop=lambda: caught["signal"] is not None)
    if outcome.stopped:
        again = shlex.join(["ddpmctl", *sys.argv[1:]])
        console.print(f"[yellow]interrupted[/yellow]: {outcome.n_finished} of {len(plan.cells)} cells finished; the running ones saved a "
                      f"checkpoint. Run the same command again to resume: {again}", soft_wrap=True)
        raise typer.Exit(128 + int(caught["signal"] or signal.SIGINT))
    outcome.check()
    console.print(f"[green]done[/green]: {len(outcome.done)} cells trained, {len(outcome.skipped)} finished before.")
    compare(outcome.runs, quality=quality, metric=None, out=plan.folder / "compare.png")


def parse_grid(items: list[str]) -> dict[str, list]:
    """``KEY=V1,V2,...`` items -> {KEY: [values]}; values parsed as `-o` values are (numbers,
    true/false, JSON lists), commas inside brackets kept."""
    out: dict[str, list] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--grid {item!r} is not of the form KEY=V1,V2,... (for example --grid lr=1e-3,3e-4).")
        if key in out:
            raise ConfigError(f"grid setting {key!r} is given twice; give all its values in one --grid {key}=V1,V2.")
        parts = split_values(text)
        if any(not part.strip() for part in parts):
            raise ConfigError(f"--grid {item!r} has an empty value; separate its values with single commas, e.g. --grid {key}=V1,V2.")
        out[key] = [parse_value(part.strip()) for part in parts]
    return out


def split_values(text: str) -> list[str]:
    """'1e-3,3e-4' -> ['1e-3', '3e-4']; '[32,64],[64,128]' -> ['[32,64]', '[64,128]']; '' -> []."""
    if not text.strip():
        return []
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_pairs(items: Optional[list[str]]) -> dict[str, Any]:
    """``KEY=VALUE`` items of --set -> {KEY: value}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r} is not of the form KEY=VALUE (for example --set batch_size=256 or --set network.depth=2).")
        out[key.strip()] = parse_value(text.strip())
    return out
