"""`ddpmctl autoencoder train`: an autoencoder for latent diffusion, in its own run directory.
`ddpmctl autoencoder eval AE`: its reconstructions of held-out images, scored as samples are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ddpmctl.cli.common import console, parse_options
from ddpmctl.cli.face import Command, sub_app
from ddpmctl.cli.render import Rich
from ddpmctl.cli.train import signals
from ddpmctl.outputs import check_folder

app = sub_app("Autoencoders for latent diffusion (Rombach et al. 2022): train one, then `ddpmctl train --latent DIR`.")


@app.command("train", cls=Command)
def train(
    data: Annotated[Optional[str], typer.Option(help="Dataset plugin (images), e.g. fashion-mnist with -o data.size=32, or emoji32.")] = None,
    autoencoder: Annotated[Optional[str], typer.Option(help="Autoencoder plugin (see `ddpmctl plugins list`; default kl).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training iterations (default 3000).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per iteration (default 64).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, default 1e-3).")] = None,
    kl_weight: Annotated[Optional[float], typer.Option(help="Weight of the KL term per latent value (default 1e-6, the paper's KL-f4).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="Reconstruction loss per pixel: l1 (default) or l2.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of weights, batches and noise.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default: ae-<data>-<date>-<time>).")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Where run directories are made.")] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop when the run's wall time reaches this: seconds, or 90s, 15m, 1h (0: no limit).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 autocast on CPUs with AMX, else float32), fp32 or bf16.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Plugin option KIND.KEY=VALUE, KIND one of data, autoencoder (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (below env DDPMCTL_AE_* and flags).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this autoencoder run from its last good checkpoint.")] = None,
):
    """Train a KL-regularised autoencoder; writes runs/<name>/ with checkpoints, reconstruction errors and reconstructions.png."""
    import torch

    from ddpmctl.autoencoding import AutoencoderSession

    opts = parse_options(option, kinds=("data", "autoencoder"))
    flags = dict(data=data, autoencoder=autoencoder, steps=steps, batch_size=batch_size, lr=lr, kl_weight=kl_weight, loss=loss, seed=seed,
                 name=name, runs_dir=runs_dir, max_time=max_time, device=device, threads=threads, precision=precision,
                 data_options=opts["data"] or None, autoencoder_options=opts["autoencoder"] or None)
    events = Rich(console, transient=False)
    session = AutoencoderSession.prepare({k: v for k, v in flags.items() if v is not None}, config, resume, events)
    shape = "x".join(map(str, session.record.latent_shape))
    console.print(f"[bold]autoencoder[/bold] {session.run_dir.path}  ({session.record.parameters:,} parameters, "
                  f"{'x'.join(map(str, session.ds.shape))} -> {shape}, device {session.device}, {torch.get_num_threads()} threads)")
    with signals() as caught, events:
        outcome = session.run(stop=lambda: caught["signal"] is not None)
    errors = f"held-out reconstruction PSNR {outcome.errors['psnr']:.2f} dB, MSE {outcome.errors['mse']:.5f}" if outcome.errors else ""
    if outcome.reason == "interrupted":
        console.print(f"[yellow]interrupted at step {outcome.step}[/yellow]; checkpoint saved. Resume with: ddpmctl autoencoder train --resume {outcome.run}")
        raise typer.Exit(128 + int(caught["signal"]))
    console.print(f"[green]done[/green] ({outcome.reason}): step {outcome.step} of {outcome.steps} in {outcome.seconds:.1f} s; {errors}. "
                  f"Next: ddpmctl train --data {session.s.data} --latent {outcome.run}", soft_wrap=True)


@app.command("eval", cls=Command)
def evaluate(
    run: Annotated[Path, typer.Argument(help="Autoencoder run directory made by `ddpmctl autoencoder train`.")],
    metric: Annotated[list[str], typer.Option(help="Metric plugin (repeatable): fid, classifier-fid, ...")] = ["fid"],  # noqa: B006
    n: Annotated[int, typer.Option(min=2, help="Held-out images to reconstruct (and reference images).")] = 1000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the held-out subset.")] = 0,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Metric option METRIC.KEY=VALUE (repeatable).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
):
    """Score the reconstructions of held-out images like samples: the reconstruction FID is the floor of a latent model; saves JSON in AE/eval/."""
    from ddpmctl.api import evaluate_autoencoder
    from ddpmctl.checkpoint import atomic_write_bytes

    if run.is_dir():  # (a missing run is named by evaluate_autoencoder)
        check_folder(run / "eval", "the evaluation folder")  # before any reconstruction
    with Rich(console) as events:
        results = evaluate_autoencoder(run, metric, n, seed, device, parse_options(option, kinds=tuple(metric)), events)
    table = Table(title=f"{run.name}: reconstructions of {n} held-out images")
    for col in ("metric", "value", "floor (real vs real)", "value / floor"):
        table.add_column(col)
    for name, result in results.items():
        path = run / "eval" / f"reconstruction-{name}-n{n}.json"
        atomic_write_bytes(path, json.dumps(result.to_dict(), indent=2).encode())
        for key, value in result.values.items():
            floor = result.floor.get(key, float("nan"))
            table.add_row(key, f"{value:.4g}", f"{floor:.4g}", f"{value / floor:.2f}" if floor else "nan")
    console.print(table)
    console.print(f"saved in {run / 'eval'}")
