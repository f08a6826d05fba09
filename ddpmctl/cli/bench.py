"""`ddpmctl bench quality RUN`: sample quality against network evaluations, per sampler.
`ddpmctl bench speed`: training and sampling throughput of the default networks (ddpmctl.speed),
optionally against diffusers.

Every sampler and step count starts from the same noise (fixed seeds, sample i depends only
on (seed, i)), so the rows differ only by the sampler. Results go to RUN/bench/ as CSV, JSON
and a PNG of metric against NFE.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ddpmctl import registry
from ddpmctl.cli.common import human, interruptible, json_safe, load_run, parse_options, print_json
from ddpmctl.cli.face import Command, sub_app
from ddpmctl.cli.render import Rich
from ddpmctl.errors import NumericalError, OptionsError
from ddpmctl.outputs import check_file, check_folder

if TYPE_CHECKING:
    from ddpmctl.api import Run
    from ddpmctl.pipeline import Model

app = sub_app("Benchmark samplers (quality) and the default networks (speed).")
JSON_HELP = "Print the results as one JSON document on stdout (notes and progress go to stderr)."


def _names(text: str, what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise OptionsError(f"{what} needs at least one name, comma-separated.")
    return list(dict.fromkeys(names))


def _int_list(text: str, what: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise OptionsError(f"{what} must be integers separated by commas, like 5,10,20; got {text!r}.") from None
    if not steps or steps[0] < 1:
        raise OptionsError(f"{what} must be positive integers, like 5,10,20; got {text!r}.")
    return steps


def _steps(text: str, run: Run) -> list[int]:
    steps = _int_list(text, "--steps")
    run.check_steps(steps[-1])
    return steps


@app.command("quality", cls=Command)
def quality(
    run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")],
    sampler: Annotated[str, typer.Option(help="Sampler plugins, comma-separated.")] = "ddpm,ddim,dpm-solver++,heun",
    steps: Annotated[str, typer.Option(help="Step counts, comma-separated (each at most the model's T).")] = "5,10,20,50,100,1000",
    n: Annotated[int, typer.Option(min=2, help="Samples per (sampler, steps), and reference examples.")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Sampling seed, the same for every row.")] = 0,
    metric: Annotated[Optional[str], typer.Option(help="Metric plugins, comma-separated (default: wasserstein for 2-D; classifier-fid, else fid, for images).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Option NAME.KEY=VALUE of a sampler or metric, e.g. ddim.eta=0.5 (repeatable).")] = None,
    clip: Annotated[Optional[float], typer.Option(min=0, help="Clamp x0_hat to [-CLIP, CLIP] at every step; 0 turns clipping off (default: [-1, 1] for images, 1.25 x the data range for 2-D).")] = None,
    dynamic_threshold: Annotated[Optional[float], typer.Option(min=0, max=100, help="Dynamic thresholding of x0_hat at this percentile (Imagen), e.g. 99.5.")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (conditional models; labels cycle over the classes).")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples drawn at once.")] = 2048,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    reference: Annotated[Optional[str], typer.Option(help="The yardstick row SAMPLER:STEPS, added if the grid lacks it, e.g. ddpm:1000 (default: ddpm at its most steps).")] = None,
    with_: Annotated[Optional[str], typer.Option("--with", help="Few-step runs of the same data (`ddpmctl distill`), comma-separated: their rows beside this run's samplers.")] = None,
    with_steps: Annotated[str, typer.Option(help="Step counts of the --with runs' few-step sampler.")] = "1,2,4",
    json_: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
):
    """Metric, network evaluations (NFE) and time per sample for every sampler and step count."""
    import torch

    from ddpmctl.pipeline import default_metric

    console = human(json_)
    run_ = load_run(run, device, out=console)
    model = run_.model
    check_folder(model.run.path / "bench", "the bench folder")  # before any sampling
    samplers = _names(sampler, "--sampler")
    metrics = _names(metric, "--metric") if metric else [default_metric(model.data.kind, model.data.shape)]
    step_list = _steps(steps, run_)
    ref = _reference(reference, model.process.max_steps) if reference else None
    opts = parse_options(option, kinds=tuple(dict.fromkeys(samplers + metrics)))
    grid = [(s, k) for s in samplers for k in step_list]
    if ref is not None and ref not in grid:
        grid.append(ref)
        opts.setdefault(ref[0], {})
    for s in dict.fromkeys(s for s, _ in grid):  # every name and option checked before any sampling
        registry.validate_options("sampler", s, opts.get(s))
    resolved = [(m, *registry.resolve("metric", m, opts.get(m))) for m in metrics]
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    with_runs = [load_run(Path(p), device, out=console) for p in _names(with_, "--with")] if with_ else []
    for other in with_runs:
        if (other.config.data, other.config.data_options) != (model.config.data, model.config.data_options):
            raise OptionsError(f"--with {other.path} was trained on other data ({other.config.data} {other.config.data_options}) than {model.run.path}; compare runs of the same data.")
    others = [(other, k) for other in with_runs for k in _int_list(with_steps, "--with-steps")] if with_runs else []

    rows, floors, protocols = [], {}, {}
    with interruptible("the benchmark stopped before any result was saved; run the command again."), Rich(console, lines=True) as events:
        for i, (s, k) in enumerate(grid):
            events.progress("bench", i, len(grid), f"{s}, {k} steps")
            rows.append(_row(run_, s, k, n, seed, opts.get(s), labels, guidance, clip, dynamic_threshold, batch_size, resolved, floors, protocols, events))
        for other, k in others:  # a few-step model's row, labelled with its run
            events.progress("bench", len(grid), len(grid), f"{other.path.name}, {k} steps")
            row = _row(other, other.model.default_sampler, k, n, seed, None, labels, guidance, clip, dynamic_threshold, batch_size, resolved, floors, protocols, events)
            rows.append({**row, "sampler": f"{other.path.name} ({row['sampler']})"})
        events.progress("bench", len(grid), len(grid))

    keys = list(floors)
    _print_table(console, model, rows, keys, floors, n, ref, table=not json_)
    record = {
        "run": str(model.run.path), "checkpoint_step": model.step, "n": n, "seed": seed, "samplers": samplers,
        "steps": step_list, "metrics": metrics, "options": opts, "clip_x0": clip, "dynamic_threshold": dynamic_threshold,
        "guidance": guidance, "device": str(model.device), "floors": floors, "protocols": protocols,
        "rows": rows, "summary": summary(rows, keys[0], ref=ref) if keys else None,
        "with": {str(o.path): o.step for o in with_runs},
    }
    stem = result_stem(metrics, samplers, grid + [(str(o.path), k) for o, k in others], opts, n, seed, guidance, clip, dynamic_threshold)
    files = _write_quality(model, stem, record, keys)
    console.print(f"saved {files[0].parent / stem}.csv, .json, .png")
    if json_:
        print_json({**record, "files": [str(f) for f in files]})


def _write_quality(model: Model, stem: str, record: dict, keys: list[str]) -> list[Path]:
    """RUN/bench/STEM.json, .csv and .png (metric against NFE) of one bench."""
    from ddpmctl import plots  # matplotlib: imported when a plot is drawn
    from ddpmctl.checkpoint import atomic_write_bytes
    from ddpmctl.pipeline import versions

    dest = model.run.path / "bench"
    dest.mkdir(parents=True, exist_ok=True)
    rows, floors, n = record["rows"], record["floors"], record["n"]
    atomic_write_bytes(dest / f"{stem}.json", json.dumps(json_safe({**record, "versions": versions()}), indent=2).encode())
    atomic_write_bytes(dest / f"{stem}.csv", _csv(rows, keys).encode())
    png = plots.quality_vs_nfe(rows, keys, floors, dest / f"{stem}.png", title=f"{model.run.path.name} (step {model.step}): quality against NFE, n={n}")
    return [dest / f"{stem}.json", dest / f"{stem}.csv", Path(png)]


def result_stem(metrics, samplers, grid, opts, n, seed, guidance, clip, dyn) -> str:
    """File stem of one bench's results: what a reader looks for first (metrics, samplers, n, seed,
    clipping), then a short hash of the rest that sets the rows (the sampler and step grid with its
    reference, options, guidance), so that two benches of one run never overwrite each other."""
    key = json.dumps({"grid": grid, "options": opts, "guidance": guidance}, sort_keys=True, default=str)
    stem = f"quality-{'+'.join(metrics)}-{'+'.join(samplers)}-n{n}-seed{seed}"
    stem += (f"-clip{clip:g}" if clip is not None else "") + (f"-dt{dyn:g}" if dyn is not None else "")
    return f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _row(run: Run, s, k, n, seed, sampler_opts, labels, guidance, clip, dyn, batch_size, resolved, floors, protocols, events) -> dict:
    """Sample with one sampler and step count, then score it; a sampler that diverges is a row with NaN."""
    from ddpmctl.metrics.base import score
    from ddpmctl.pipeline import sample as draw

    row = {"sampler": s, "steps": k, "nfe": None, "seconds_per_sample": None, "clipped_values": None, "clipped_fraction": None, "error": ""}
    t0 = time.perf_counter()
    try:
        x, rec = draw(run.model, n, s, k, seed, sampler_opts, batch_size=batch_size, labels=labels, guidance=guidance,
                      clip_x0=clip, dynamic_threshold=dyn)
    except NumericalError as exc:
        row["error"] = str(exc)
        return row
    row.update(nfe=rec["nfe"], seconds_per_sample=(time.perf_counter() - t0) / n,
               clipped_values=rec["clipped_values"], clipped_fraction=rec["clipped_fraction"])
    for name, fn, o in resolved:
        result = score(fn, x, run.dataset(), o.model_dump(), labels=labels, progress=events.metric_progress(name))
        for key, value in result.values.items():
            row[key] = float(value)
            floors.setdefault(key, float(result.floor.get(key, math.nan)))
        protocols.setdefault(name, result.protocol)
    return row


def _reference(text: str, T: int) -> tuple[str, int]:
    name, _, k = text.partition(":")
    if not name or not k.isdigit() or not 1 <= int(k) <= T:
        raise OptionsError(f"--reference must be SAMPLER:STEPS with 1 <= STEPS <= T = {T}, like ddpm:{T}; got {text!r}.")
    return name, int(k)


def summary(rows: list[dict], key: str, max_nfe: int = 20, ref: tuple[str, int] | None = None) -> dict | None:
    """The issue's yardstick: the reference row (default: the ancestral sampler at its most
    steps) against the best row at max_nfe evaluations or fewer."""
    good = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    refs = [r for r in good if (r["sampler"], r["steps"]) == ref] if ref else [r for r in good if r["sampler"] == "ddpm"]
    fast = [r for r in good if r["nfe"] is not None and r["nfe"] <= max_nfe]
    if not refs or not fast:
        return None
    ref_row = max(refs, key=lambda r: r["nfe"])
    best = min(fast, key=lambda r: r[key])
    return {"metric": key, "reference": {k: ref_row[k] for k in ("sampler", "steps", "nfe", key)},
            "best_fast": {k: best[k] for k in ("sampler", "steps", "nfe", key)}, "max_nfe": max_nfe,
            "ratio": best[key] / ref_row[key] if ref_row[key] else math.nan}


def _print_table(console: Console, model: Model, rows, keys, floors, n, ref=None, table: bool = True) -> None:
    """The table of rows (unless ``table`` is false), the summary line and the samplers that failed."""
    if table:
        console.print(_table(model, rows, keys, floors, n))
    if keys:
        s = summary(rows, keys[0], ref=ref)
        if s:
            ref, best = s["reference"], s["best_fast"]
            console.print(
                f"{keys[0]}: {ref['sampler']} at {ref['nfe']} NFE {ref[keys[0]]:.4g}; best at <= {s['max_nfe']} NFE: "
                f"{best['sampler']} {best['steps']} steps ({best['nfe']} NFE) {best[keys[0]]:.4g}, {s['ratio']:.2f}x the reference."
            )
    for r in rows:
        if r["error"]:
            console.print(f"[yellow]{r['sampler']}, {r['steps']} steps:[/yellow] {r['error']}")


def _table(model: Model, rows, keys, floors, n) -> Table:
    table = Table(title=f"{model.run.path.name} (step {model.step}), n={n}: quality against network evaluations")
    for col in ("sampler", "steps", "NFE", *keys, "ms / sample", "x0 clipped"):
        table.add_column(col, justify="left" if col == "sampler" else "right")
    for r in rows:
        if r["error"]:
            table.add_row(r["sampler"], str(r["steps"]), "-", *(["[red]NaN[/red]"] * len(keys)), "-", "-")
            continue
        vals = [f"{r[k]:.4g}" if k in r else "-" for k in keys]
        clipped = f"{100 * r['clipped_fraction']:.2f}%" if r["clipped_values"] else "0"
        table.add_row(r["sampler"], str(r["steps"]), str(r["nfe"]), *vals, f"{1000 * r['seconds_per_sample']:.3f}", clipped)
    table.caption = "floor (real vs real, same n): " + ", ".join(f"{k} {v:.4g}" for k, v in floors.items())
    return table


def _csv(rows: list[dict], keys: list[str]) -> str:
    cols = ["sampler", "steps", "nfe", *keys, "seconds_per_sample", "clipped_values", "clipped_fraction", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("nan" if c in keys and c not in r else r.get(c)) for c in cols})
    return buf.getvalue()


@app.command("speed", cls=Command)
def speed(
    model: Annotated[str, typer.Option(help="Default models to time, comma-separated: 2d (mlp), mnist16 (unet 16x16), rgb32 (unet 32x32 RGB).")] = "2d,mnist16,rgb32",
    vs: Annotated[Optional[str], typer.Option(help="Also time diffusers' UNet2DModel + DDPMScheduler at a matched size, interleaved (needs `pip install diffusers`, the extra `bench`).")] = None,
    nfe: Annotated[int, typer.Option(min=1, help="Network evaluations of each timed ancestral sampling run (1000: the full chain).")] = 1000,
    train_steps: Annotated[int, typer.Option(min=1, help="Timed training steps per repeat.")] = 20,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats; the median is reported.")] = 3,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Training and sampling batch (default: each model's training default).")] = None,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile ddpmctl's network (training and sampling).")] = False,
    precision: Annotated[str, typer.Option(help="auto (training in bf16 where `ddpmctl train` would use it: image models on CPUs with AMX; sampling in float32), fp32 or bf16 (training and sampling); both sides alike.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (default: torch's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--out", help="Also write the results to this JSON file.")] = None,
    json_: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
):
    """Training and sampling images per second, and peak step memory, of the default networks."""
    from ddpmctl import speed as bench_speed  # diffusers and the profiler: `bench speed` only
    from ddpmctl.checkpoint import atomic_write_bytes
    from ddpmctl.devices import pick_device, set_threads

    console = human(json_)

    models = _names(model, "--model")
    settings = bench_speed.Settings(train_steps=train_steps, nfe=nfe, repeats=repeats, batch_size=batch_size,
                                    compile=compile, precision=precision, vs=vs)
    bench_speed.check(models, settings)
    if json_out is not None:
        check_file(json_out, "--out")  # before anything is timed
    skipped = [m for m in models if not bench_speed.has_counterpart(m)]
    if vs and skipped:
        console.print(f"[yellow]note:[/yellow] diffusers has no counterpart of {', '.join(skipped)}; timing ddpmctl alone there.")
    set_threads(threads)
    dev = pick_device(device)
    results = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("speed", total=len(models))
        for m in models:
            s = dataclasses.replace(settings, vs=vs if bench_speed.has_counterpart(m) else None)
            results.append(bench_speed.measure(m, s, dev, tick=lambda d: bar.update(task, description=d)))
            bar.advance(task)
    env = bench_speed.environment(dev)
    doc = {"environment": env, "settings": dataclasses.asdict(settings), "results": results}
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_out, json.dumps(doc, indent=2).encode())
    if json_:
        print_json(doc)
    else:
        for table in _speed_tables(results, env):
            console.print(table)
    if json_out is not None:
        console.print(f"saved {json_out}")


def _speed_tables(results: list[dict], env: dict) -> list[Table]:
    tables = []
    for r in results:
        table = Table(title=f"{r['model']} ({r['network']}, batch {r['batch_size']}) on {env['device']}, {env['threads']} threads: "
                            f"medians of {r['repeats']} interleaved repeats")
        for col in ("side", "parameters", "train img/s", f"sample img/s, {r['nfe']} NFE", "train step MB", "sample step MB"):
            table.add_column(col, justify="left" if col == "side" else "right")
        for name, s in r["sides"].items():
            table.add_row(name, f"{s['parameters']:,}", f"{s['train_images_per_s']:.1f}", f"{s['sample_images_per_s']:.3g}",
                          f"{s['train_step_peak_mb']:.1f}", f"{s['sample_step_peak_mb']:.1f}")
        if "ratios" in r:
            table.add_row("[bold]ddpmctl / diffusers[/bold]", "", f"[bold]{r['ratios']['train']:.2f}x[/bold]", f"[bold]{r['ratios']['sample']:.2f}x[/bold]", "", "")
        tables.append(table)
    return tables
