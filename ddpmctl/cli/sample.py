"""`ddpmctl sample RUN`: draw samples from a trained run; .npz plus pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer
from rich.progress import Progress

from ddpmctl import registry
from ddpmctl.cli.common import console, parse_options
from ddpmctl.errors import OptionsError
from ddpmctl.pipeline import Model, load_model, sample as draw


def sample(
    run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")],
    n: Annotated[int, typer.Option(min=1, help="Number of samples.")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Seed: sample i depends only on (seed, i).")] = 0,
    sampler: Annotated[str, typer.Option(help="Sampler plugin (see `ddpmctl plugins list --kind sampler`).")] = "ddpm",
    steps: Annotated[Optional[int], typer.Option(min=1, help="Denoising steps (default: all T training steps).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Sampler option KEY=VALUE (repeatable).")] = None,
    trajectory: Annotated[bool, typer.Option(help="Also save x_t along the reverse process as a PNG grid and a GIF.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples drawn at once.")] = 2048,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: RUN/samples).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
):
    """Sample from a run's EMA weights; writes samples (.npz) and a PNG of them over the data."""
    model = load_model(run, device)
    _check_steps(model, steps)
    sampler_opts = parse_options(option)
    registry.validate_options("sampler", sampler, sampler_opts)
    out = out or model.run.path / "samples"
    stem = f"{sampler}-{steps or model.schedule.T}steps-seed{seed}"

    frames: list[tuple[str, torch.Tensor]] = []
    keep_every = None

    def record(i, S, t, x_t, x0_hat):
        nonlocal keep_every
        keep_every = keep_every or max(1, S // 40)
        if i == 1 or i % keep_every == 0 or i == S:
            frames.append((f"t = {t}" if i < S else "t = 0 (x_0)", x_t.float().cpu()))

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"sampling {n} with {sampler}", total=n)
        x, rec = draw(model, n, sampler, steps, seed, sampler_opts, batch_size,
                      callback=record if trajectory else None, on_batch=lambda b: bar.advance(task, b))

    out.mkdir(parents=True, exist_ok=True)
    npz = out / f"{stem}.npz"
    np.savez(npz, samples=x.numpy(), record=json.dumps(rec))
    console.print(f"samples: {npz}  ({rec['nfe']} network evaluations per sample)")
    _pictures(model, x, frames, out, stem)


def _check_steps(model: Model, steps: Optional[int]) -> None:
    if steps is not None and steps > model.schedule.T:
        raise OptionsError(f"--steps {steps} is more than the model's T = {model.schedule.T} training steps; use at most {model.schedule.T}.")


def _pictures(model: Model, x: torch.Tensor, frames, out: Path, stem: str) -> None:
    from ddpmctl import plots

    if model.data["kind"] == "points":
        data = model.dataset().fresh(len(x), 0)[0]
        png = plots.scatter_2d(x, data, out / f"{stem}.png", title=f"{model.run.path.name}: {stem}")
        console.print(f"plot: {png}")
        if frames:
            lim = (-float(data.abs().max()) * 1.3, float(data.abs().max()) * 1.3)
            first = frames[0][1]
            x_T = ("x_T", first)
            picks = [frames[round(i * (len(frames) - 1) / 7)] for i in range(8)]
            grid = plots.panels_2d([x_T] + picks[1:] if picks[0][1] is first else picks, out / f"{stem}-trajectory.png",
                                   title="reverse process: x_t from noise to data", lim=lim)
            gif = plots.gif_2d(frames, out / f"{stem}-trajectory.gif", lim=lim)
            console.print(f"trajectory: {grid}, {gif}")
