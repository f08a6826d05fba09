"""`ddpmctl eval RUN --metric NAME`: metrics of a run's samples, each beside its floor."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer
from rich.progress import Progress
from rich.table import Table

from ddpmctl import registry
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.cli.common import check_steps, console, load_run, parse_options
from ddpmctl.cli.sample import _labels
from ddpmctl.datasets.base import to_float
from ddpmctl.errors import DataError
from ddpmctl.pipeline import sample as draw


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")],
    metric: Annotated[list[str], typer.Option(help="Metric plugin (repeatable): kl, wasserstein, sliced-wasserstein, ...")] = ["wasserstein"],  # noqa: B006
    n: Annotated[int, typer.Option(min=2, help="Number of samples (and of reference points).")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Sampling seed.")] = 0,
    sampler: Annotated[str, typer.Option(help="Sampler plugin.")] = "ddpm",
    steps: Annotated[Optional[int], typer.Option(min=1, help="Denoising steps (default: all T).")] = None,
    samples: Annotated[Optional[Path], typer.Option(help="Evaluate this .npz from `ddpmctl sample`, or a folder from `ddpmctl sample --export`, instead of sampling.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Metric option METRIC.KEY=VALUE (repeatable).")] = None,
    classes: Annotated[Optional[str], typer.Option("--class", help="Conditional models: sample these classes (comma list; default all) for class-accuracy and cas.")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale when sampling a conditional model.")] = 1.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
):
    """Compute metrics between a run's samples and real data; saves JSON in RUN/eval/."""
    model = load_run(run, device)
    check_steps(steps, model.schedule.T)
    opts = parse_options(option, kinds=tuple(metric))
    metrics = [(m, *registry.resolve("metric", m, opts.get(m))) for m in metric]  # every name checked first

    if samples is not None:
        x, rec, labels = _read_samples(samples)
    else:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"sampling {n} with {sampler}", total=n)
            labels = _labels(model, [classes] if classes else None, guidance, n)
            if labels is None and model.num_classes and any("labels" in inspect.signature(fn).parameters for _, fn, _ in metrics):
                labels = _labels(model, [",".join(map(str, range(model.num_classes)))], guidance, n)  # every class
            x, rec = draw(model, n, sampler, steps, seed, None, labels=labels, guidance=guidance, callback=None,
                          on_batch=lambda b: bar.advance(task, b))

    table = Table(title=f"{model.run.path.name} (step {model.step}, {rec['sampler']}, {rec['nfe']} NFE, n={len(x)})")
    for col in ("metric", "value", "floor (real vs real)", "value / floor"):
        table.add_column(col)
    (model.run.path / "eval").mkdir(exist_ok=True)
    for name, fn, o in metrics:
        kwargs = o.model_dump()
        params = inspect.signature(fn).parameters
        if "labels" in params:
            kwargs["labels"] = labels
        if "png" in params and kwargs.get("png") is None:
            kwargs["png"] = str(model.run.path / "eval" / f"{name}-{rec['sampler']}-{rec['steps']}steps-n{len(x)}.png")
        with Progress(console=console, transient=True) as bar:
            tasks: dict = {}

            def progress(what, done, total):
                if what not in tasks:
                    tasks[what] = bar.add_task(str(what), total=total)
                bar.update(tasks[what], completed=done, total=total)

            if "progress" in params:
                kwargs["progress"] = progress
            result = fn(x, model.dataset(), **kwargs)
        for warning in result.protocol.get("warnings", []):
            console.print(f"[yellow]warning ({name}):[/yellow] {warning}")
        if result.protocol.get("summary"):
            console.print(f"{name}: {result.protocol['summary']}")
        for key, value in result.values.items():
            floor = result.floor.get(key, float("nan"))
            ratio = value / floor if floor else float("nan")
            table.add_row(key, f"{value:.4g}", f"{floor:.4g}", f"{ratio:.2f}")
        out = {**result.to_dict(), "sampling": rec, "run": str(model.run.path)}
        path = model.run.path / "eval" / f"{name}-{rec['sampler']}-{rec['steps']}steps-n{len(x)}.json"
        atomic_write_bytes(path, json.dumps(out, indent=2).encode())
        console.print(f"[dim]{name} protocol:[/dim] {protocol_line(result.protocol, rec)}; all of it in {path}", soft_wrap=True)
    console.print(table)
    console.print(f"saved in {model.run.path / 'eval'}")


def protocol_line(protocol: dict, sampling: dict) -> str:
    """The protocol in one line: what was compared with what, through which features, sampled how."""
    parts = []
    if "n" in protocol:
        ref = protocol.get("reference", {})
        against = f" against {protocol['n_ref']} {ref.get('split', 'reference')} images" if "n_ref" in protocol else ""
        parts.append(f"{protocol['n']} samples{against}")
    if "n_floor" in protocol:
        parts.append(f"floor on {protocol['n_floor']} held-out images")
    if "feature_network" in protocol:
        parts.append(f"features {protocol['feature_network'].split(' (')[0]}, {protocol.get('layer', '')}".rstrip(", "))
    if "weights" in protocol:
        parts.append(f"weights {protocol['weights']} (sha256 {str(protocol.get('weights_sha256', '?'))[:12]})")
    if "classifier" in protocol and isinstance(protocol["classifier"], str):
        sha = f" (sha256 {protocol['classifier_sha256'][:12]})" if protocol.get("classifier_sha256") else ""
        parts.append(f"classifier {protocol['classifier']}{sha}")
    resize = protocol.get("preprocessing", {}).get("resize") if isinstance(protocol.get("preprocessing"), dict) else None
    if resize:
        parts.append(f"resize {resize.split(' (')[0]}")
    how = f"sampler {sampling.get('sampler', '?')}, {sampling.get('steps', '?')} steps"
    for key in ("seed", "guidance"):
        if sampling.get(key) is not None:
            how += f", {key} {sampling[key]}"
    parts.append(how)
    return "; ".join(parts)


def _read_samples(path: Path):
    if path.is_dir():  # an export of `ddpmctl sample --export`: PNGs and a manifest
        from ddpmctl.export import read

        pixels, labels, manifest = read(path)
        return to_float(pixels), manifest.get("sampling", {"sampler": "?", "steps": "?", "nfe": "?"}), labels
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist; make one with `ddpmctl sample RUN`.")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = f["samples"]
            rec = json.loads(str(f["record"])) if "record" in f else {"sampler": "?", "steps": "?", "nfe": "?"}
            labels = torch.from_numpy(f["labels"]).long() if "labels" in f else None
    except (ValueError, KeyError, OSError) as exc:
        raise DataError(f"{path} is not a samples file from `ddpmctl sample` ({exc}).") from None
    x = torch.from_numpy(raw)
    x = to_float(x) if raw.dtype == np.uint8 else x.float()  # images are saved as 8-bit pixels
    return x, rec, labels
