"""`ddpmctl eval RUN --metric NAME`: metrics of a run's samples, each beside its floor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ddpmctl.cli.common import human, interruptible, load_run, parse_options, print_json
from ddpmctl.cli.render import Rich
from ddpmctl.outputs import check_folder


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")],
    metric: Annotated[list[str], typer.Option(help="Metric plugin (repeatable): kl, wasserstein, sliced-wasserstein, ...")] = ["wasserstein"],  # noqa: B006
    n: Annotated[int, typer.Option(min=2, help="Number of samples (and of reference points).")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Sampling seed.")] = 0,
    sampler: Annotated[Optional[str], typer.Option(help="Sampler plugin (default: ddpm, or few-step for a model made by `ddpmctl distill`).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Denoising steps (default: all T).")] = None,
    samples: Annotated[Optional[Path], typer.Option(help="Evaluate this .npz from `ddpmctl sample`, or a folder from `ddpmctl sample --export`, instead of sampling.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Metric option METRIC.KEY=VALUE (repeatable).")] = None,
    classes: Annotated[Optional[str], typer.Option("--class", help="Conditional models: sample these classes (comma list; default all) for class-accuracy and cas.")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale when sampling a conditional model.")] = 1.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print the results as one JSON document on stdout (notes and progress go to stderr).")] = False,
):
    """Compute metrics between a run's samples and real data; saves JSON in RUN/eval/."""
    console = human(json_)
    run_ = load_run(run, device, out=console)
    check_folder(run_.path / "eval", "the evaluation folder")  # before any sampling
    with interruptible("the evaluation stopped before any result was saved; run the command again to evaluate."), Rich(console, lines=True) as events:
        ev = run_.evaluate(metric, n, sampler, steps, seed, samples, [classes] if classes else None, guidance,
                           options=parse_options(option, kinds=tuple(metric)), events=events)
    paths = ev.save()
    rec = ev.samples.record
    table = Table(title=f"{run_.path.name} (step {run_.step}, {rec['sampler']}, {rec['nfe']} NFE, n={len(ev.samples)})")
    for col in ("metric", "value", "floor (real vs real)", "value / floor"):
        table.add_column(col)
    for (name, result), path in zip(ev.results.items(), paths):
        for warning in result.protocol.get("warnings", []):
            console.print(f"[yellow]warning ({name}):[/yellow] {warning}")
        if result.protocol.get("summary"):
            console.print(f"{name}: {result.protocol['summary']}")
        for key, value in result.values.items():
            floor = result.floor.get(key, float("nan"))
            ratio = value / floor if floor else float("nan")
            table.add_row(key, f"{value:.4g}", f"{floor:.4g}", f"{ratio:.2f}")
        console.print(f"[dim]{name} protocol:[/dim] {protocol_line(result.protocol, rec)}; all of it in {path}", soft_wrap=True)
    if not json_:
        console.print(table)
    console.print(f"saved in {ev.run / 'eval'}")
    if json_:
        print_json({"run": str(ev.run), "step": ev.step, "n": len(ev.samples), "sampling": rec,
                    "metrics": {name: {**result.to_dict(), "path": str(path)} for (name, result), path in zip(ev.results.items(), paths)}})


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
