"""`ddpmctl data show NAME`: look at a dataset, and at the forward process on it.
`ddpmctl data fetch NAME [--from DIR]`: download a dataset, or import its original files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmctl import registry
from ddpmctl.cli.common import console, parse_options
from ddpmctl.cli.face import Command, sub_app
from ddpmctl.config import data_dir
from ddpmctl.outputs import FIGURE, IMAGE, check_file

app = sub_app("Fetch and look at datasets.")


@app.command("fetch", cls=Command)
def fetch(
    name: Annotated[str, typer.Argument(help="Dataset: mnist (also mnist16), fashion-mnist, cifar10 or emoji32.")],
    source: Annotated[Optional[Path], typer.Option("--from", help="Import the original files from this folder (or archive) instead of downloading; MD5s are checked.")] = None,
):
    """Download a dataset into the data directory ($DDPMCTL_DATA_DIR), or import it with --from DIR."""
    from ddpmctl.datasets.fetch import fetch as fetch_data

    for line in fetch_data(name, source):
        console.print(line)
    console.print(f"data directory: {data_dir()}")


@app.command("show", cls=Command)
def show(
    name: Annotated[str, typer.Argument(help="Dataset plugin, for example spiral or 8gaussians.")],
    noise: Annotated[bool, typer.Option(help="Show the forward process q(x_t | x_0) at t = 0 ... T.")] = False,
    schedule: Annotated[str, typer.Option(help="Noise schedule for --noise.")] = "linear",
    n: Annotated[int, typer.Option(min=1, help="Points (or images) shown.")] = 2000,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Dataset option KEY=VALUE (repeatable).")] = None,
    digits: Annotated[Optional[str], typer.Option(help="Digit subset for MNIST-like data.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="PNG path (default: NAME.png or NAME-noise.png here).")] = None,
):
    """Save a PNG of a dataset; with --noise, of x_t at eight times from t = 0 to T."""
    import torch

    from ddpmctl import plots  # matplotlib: imported when a plot is drawn
    from ddpmctl.diffusion import q_sample
    from ddpmctl.pipeline import build_dataset

    opts = parse_options(option)
    if digits is not None:
        opts["digits"] = digits
    registry.validate_options("dataset", name, opts)
    sched = registry.build("schedule", schedule, {}) if noise else None
    ds = build_dataset(name, opts)
    out = check_file(out or Path(f"{name}{'-noise' if noise else ''}.png"), "--out", FIGURE if ds.kind == "points" else IMAGE)
    x = ds.x[torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n]]
    if ds.kind == "points":
        if noise:
            T = sched.T
            ts = [0] + [round(T * k / 7) - 1 for k in range(1, 8)]
            eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            frames = [("x_0 (data)" if t == 0 else f"t = {t + 1}", q_sample(sched, x, torch.full((len(x),), t), eps) if t > 0 else x) for t in ts]
            plots.panels_2d(frames, out, title=f"{name}: forward process q(x_t | x_0), {schedule} schedule, T = {T}", lim=(-4, 4))
        else:
            lim = float(x.abs().max()) * 1.1
            plots.panels_2d([(f"{name} (n={len(x)})", x)], out, lim=(-lim, lim))
    else:
        imgs = x[: min(n, 64)]
        if noise:
            T = sched.T
            ts = [round(T * k / 7) - 1 for k in range(1, 8)]
            rows = [imgs[:8]] + [q_sample(sched, imgs[:8], torch.full((8,), t), torch.randn_like(imgs[:8])) for t in ts]
            plots.image_grid(torch.cat(rows), out, nrow=8)
        else:
            plots.image_grid(imgs, out)
    console.print(f"saved {out} ({len(ds)} examples, shape {tuple(ds.shape)})")
