"""`ddpmctl plot RUN` and `ddpmctl compare RUN1 RUN2 ...`: loss and quality during training,
against steps and against wall time, for one run or overlaid for several."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ddpmctl.cli.common import console, human, print_json
from ddpmctl.stopping import LOSS_WINDOW, Threshold
from ddpmctl.errors import OptionsError, RunError
from ddpmctl.outputs import FIGURE, check_file, check_folder

if TYPE_CHECKING:
    from ddpmctl.run import RunDir


def plot(run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")]):
    """Draw a run's loss.png, convergence.png (loss and quality against steps and wall time) and
    samples-over-training.png again from its metrics.jsonl."""
    from ddpmctl import convergence

    r = _open(run)
    check_folder(r.path, "the run directory")
    for p in convergence.write_plots(r):
        console.print(f"plot: {p}")
    if not convergence.eval_records(r.metrics()):
        console.print("no quality evaluations in this run; train with --eval-every N to measure quality during training.")


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories made by `ddpmctl train`.")],
    quality: Annotated[Optional[str], typer.Option(help="Threshold NAME<=X or NAME>=X, e.g. wasserstein<=0.1, w2<=0.1 or loss<=0.4: steps and wall time each run took to reach it.")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Value of the evaluations to plot (default: the one --quality reads, else the first one of the first run).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="PNG to write; a .json of the table goes beside it (default: compare-RUN1-RUN2-....png in the first run's parent folder).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the table as one JSON document on stdout (notes go to stderr).")] = False,
):
    """Overlay the loss and quality curves of several runs (against steps and wall time) and tabulate
    final loss, final quality, and the steps and wall time each took to reach --quality."""
    from ddpmctl import convergence, plots  # plots: matplotlib, imported when a plot is drawn
    from ddpmctl.checkpoint import atomic_write_bytes

    threshold = None
    if quality is not None:
        try:
            threshold = Threshold.parse(quality)
        except ValueError as exc:
            raise OptionsError(f"--quality {quality!r} is {exc}.") from None
    opened = [_open(p) for p in runs]
    labels = [r.path.name for r in opened]
    if len(set(labels)) < len(labels):
        labels = [str(r.path) for r in opened]
    records = []
    for r in opened:
        recs = r.metrics()
        if not convergence.loss_records(recs):
            raise RunError(f"run {r.path} has no loss records yet; train it with `ddpmctl train` first.")
        records.append(recs)

    key = metric
    if key is None and threshold is not None:
        key = next((k for recs in records if (k := convergence.threshold_key(recs, threshold)) not in (None, "loss")), None)
    if key is None:
        key = next((k for recs in records if (k := convergence.primary_key(recs))), None)
    reported = sorted({k for recs in records for e in convergence.eval_records(recs) for k in e["values"]})
    if metric is not None and metric not in reported:
        raise OptionsError(f"--metric {metric} is not a value of these runs' evaluations; they report: {', '.join(reported) or 'nothing (train with --eval-every N)'}.")
    if threshold is not None and threshold.name != "loss" and not any(convergence.threshold_key(recs, threshold) for recs in records):
        raise OptionsError(f"--quality reads {threshold.name!r}, which none of these runs measured; they report: {', '.join(reported) or 'no evaluations (train with --eval-every N)'}.")

    rows = [_row(label, r, recs, key, threshold) for label, r, recs in zip(labels, opened, records)]
    if not json_:
        _print_table(console, rows, key, threshold)
    if out is None:
        names = labels[:4] + ([f"and{len(labels) - 4}more"] if len(labels) > 4 else [])
        out = opened[0].path.parent / ("compare-" + "-".join(Path(n).name for n in names) + ".png")
    check_file(out, "--out", FIGURE)  # the plot, and its table beside it, before anything is drawn
    check_file(out.with_suffix(".json"), "--out")
    lines = {}
    if threshold is not None:
        lines = {"loss": threshold.value} if threshold.name == "loss" else {"metric": threshold}
    title = "loss" + (f" and {key}" if key else "") + " during training: " + ", ".join(labels)
    png = plots.convergence(list(zip(labels, records)), key, out, title=title, lines=lines, window=LOSS_WINDOW)
    doc = {"quality": str(threshold) if threshold else None, "metric": key, "runs": rows}
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(doc, indent=2).encode())
    human(json_).print(f"plot: {png}\ntable: {out.with_suffix('.json')}")
    if json_:
        print_json({**doc, "plot": str(png), "table": str(out.with_suffix(".json"))})


def _open(path: Path) -> RunDir:
    from ddpmctl.run import RunDir

    run = RunDir.open(path)
    if not run.metrics():
        raise RunError(f"run {run.path} has no metrics.jsonl records yet; train it with `ddpmctl train` first.")
    return run


def _row(label: str, run: RunDir, records: list[dict], key: Optional[str], threshold: Optional[Threshold]) -> dict:
    from ddpmctl import convergence

    stop = convergence.read_stop(run.path) or {}
    row = {
        "run": label, "path": str(run.path), "stopped": stop.get("reason"),
        "steps": max(r["step"] for r in records), "time": max(r.get("time", 0.0) for r in records),
        "final_loss": convergence.final(records, "loss"),
        "metric": key, "final_metric": convergence.final(records, key) if key else None,
        "quality": str(threshold) if threshold else None, "reached": None,
    }
    if threshold is not None:
        row["reached"] = convergence.first_crossing(records, threshold)
    return row


def _fmt(v, spec=".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _print_table(console: Console, rows: list[dict], key: Optional[str], threshold: Optional[Threshold]) -> None:
    table = Table(title="convergence" + (f": steps and wall time to {threshold}" if threshold else ""))
    cols = ["run", "stopped by", "steps", "wall time (s)", "final loss (smoothed)", f"final {key}" if key else None]
    if threshold is not None:
        cols += [f"steps to {threshold}", f"time to {threshold} (s)"]
    for c in filter(None, cols):
        table.add_column(c, justify="left" if c in ("run", "stopped by") else "right")
    for r in rows:
        cells = [r["run"], r["stopped"] or "-", str(r["steps"]), _fmt(r["time"], ".1f"), _fmt(r["final_loss"])]
        if key:
            cells.append(_fmt(r["final_metric"]))
        if threshold is not None:
            hit = r["reached"]
            cells += [str(hit["step"]), _fmt(hit["time"], ".1f")] if hit else ["not reached", "-"]
        table.add_row(*cells)
    table.caption = f"smoothed loss: the mean of the last {LOSS_WINDOW} logged losses; wall time includes the evaluations"
    console.print(table)
