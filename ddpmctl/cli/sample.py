"""`ddpmctl sample RUN`: draw samples from a trained run; .npz plus pictures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.progress import Progress

from ddpmctl.cli.common import console, interruptible, load_run, parse_options
from ddpmctl.cli.render import Rich
from ddpmctl.errors import OptionsError
from ddpmctl.outputs import IMAGE, check_file, check_folder

if TYPE_CHECKING:
    from ddpmctl.api import Run
    from ddpmctl.samples import Samples


def sample(
    run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")],
    n: Annotated[Optional[int], typer.Option(min=1, help="Number of samples (default: 2000 for 2-D data, 64 for images).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed: sample i depends only on (seed, i).")] = 0,
    sampler: Annotated[Optional[str], typer.Option(help="Sampler plugin (see `ddpmctl plugins list --kind sampler`; default: ddpm, or few-step for a model made by `ddpmctl distill`).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Denoising steps (default: all T training steps).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Sampler option KEY=VALUE (repeatable).")] = None,
    trajectory: Annotated[bool, typer.Option(help="Also save x_t along the reverse process as a PNG grid and a GIF.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Samples drawn at once (default: 2048 for 2-D data, 256 for images).")] = None,
    classes: Annotated[Optional[list[str]], typer.Option("--class", help="Class label(s) to sample, repeatable or a comma list (e.g. --class 7 or --class 1,2); samples are spread evenly over them. Class-conditional models only (default: the unconditional model, or all classes with --guidance).")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale s: eps_u + s (eps_c - eps_u); 1 is the plain conditional model, 0 the unconditional one.")] = 1.0,
    grid: Annotated[Optional[Path], typer.Option(help="Also save a PNG grid of the samples (images; the first 400) at this path.")] = None,
    clip: Annotated[Optional[float], typer.Option(min=0, help="Clamp x0_hat to [-CLIP, CLIP] at every step; 0 turns clipping off (default: [-1, 1] for images, 1.25 x the data range for 2-D).")] = None,
    dynamic_threshold: Annotated[Optional[float], typer.Option(min=0, max=100, help="Dynamic thresholding of x0_hat at this percentile (Imagen), e.g. 99.5.")] = None,
    per_class: Annotated[Optional[int], typer.Option(min=1, help="Class-conditional models: K samples of each class (of --class, default all), instead of --n.")] = None,
    export: Annotated[Optional[Path], typer.Option(help="Also write the images as a labelled folder, DIR/<class>/<index>.png with DIR/manifest.json, that imagefolder and torchvision's ImageFolder read (DIR new or empty).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: RUN/samples).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Run the network through torch.compile: a slow first batch, then faster ones (worth it for many steps).")] = False,
):
    """Sample from a run's EMA weights; writes samples (.npz) and a PNG of them over the data."""
    from ddpmctl.export import check_target

    run_ = load_run(run, device, compile=compile)
    run_.check_steps(steps)
    images = run_.data.kind == "images"
    check_folder(out or run_.path / "samples", "--out" if out else "the samples folder")  # every output checked before sampling
    if grid is not None:
        check_file(grid, "--grid", IMAGE)
    if export is not None:
        check_target(export)
        if not images:
            raise OptionsError(f"--export writes image files, but {run_.path} is a model of 2-D points; use the .npz that `ddpmctl sample` writes.")
    with interruptible("sampling stopped before any file was written; run the command again to sample."), Rich(console, lines=True) as events:
        drawn = run_.sample(n, sampler, steps, seed, classes, guidance, per_class, clip=clip, dynamic_threshold=dynamic_threshold,
                            options=parse_options(option), batch_size=batch_size, trajectory=trajectory, events=events)
    stem = f"{drawn.record['sampler']}-{drawn.record['steps']}steps-seed{seed}" + _label_stem(classes, guidance, drawn.labels)
    stem += f"-{per_class}perclass" if per_class else ""
    out = out or run_.path / "samples"
    npz = drawn.save(out / f"{stem}.npz")
    console.print(f"samples: {npz}  ({drawn.record['nfe']} network evaluations per sample)")
    if export is not None:
        _export(run_, drawn, export, per_class)
    if images:
        _image_pictures(drawn, out, stem, grid)
    else:
        _pictures(run_, drawn, out, stem)


def _export(run: Run, drawn: Samples, folder: Path, per_class: Optional[int]) -> None:
    """The samples as a labelled image folder with a manifest of how they were drawn."""
    from ddpmctl.datasets.base import to_uint8
    from ddpmctl.export import write as write_export
    from ddpmctl.pipeline import versions

    cfg, rec = run.config, drawn.record
    manifest = {
        "run": str(run.path.resolve()), "model": {k: getattr(cfg, k) for k in ("data", "data_options", "network", "cond", "prediction")},
        "checkpoint_step": run.step, "sampler": rec["sampler"], "steps": rec["steps"], "seed": rec["seed"],
        "seeds": f"image <index> draws its noise from torch.Generator().manual_seed({rec['seed']} * 1000003 + index // 16) (ddpmctl.pipeline.block_generators)",
        "guidance": rec["guidance"], "per_class": per_class, "sampling": rec, "versions": versions(),
    }
    x, labels = drawn.x, drawn.labels
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"writing {len(x)} PNGs", total=len(x))
        path = write_export(folder, to_uint8(x), labels, run.num_classes, manifest, on_image=lambda k: bar.advance(task, k))
    what = f"{len(x)} images" + ("" if labels is None else f" in {len(set(labels.tolist()))} class folders")
    console.print(f"export: {folder} ({what}; {path.name})")


def _label_stem(classes, guidance: float, labels) -> str:
    stem = ""
    if classes:
        stem += "-class" + "_".join(str(c) for c in sorted(set(labels.tolist())))
    if guidance != 1.0:
        stem += f"-w{guidance:g}"
    return stem


def _image_pictures(drawn: Samples, out: Path, stem: str, grid: Optional[Path]) -> None:
    """A PNG grid of the samples (one row per class block when they fit), and of the trajectory."""
    import torch

    from ddpmctl import plots  # matplotlib: imported when a plot is drawn

    x, labels, frames = drawn.x, drawn.labels, drawn.trajectory
    shown = x[:400]
    nrow = None
    if labels is not None:
        k = len(set(labels.tolist()))
        if len(x) % k == 0 and 1 < k <= 20 and len(x) // k <= 20 and len(x) <= 400:
            nrow = len(x) // k  # one row per class
    for path in [out / f"{stem}.png"] + ([grid] if grid else []):
        console.print(f"grid: {plots.image_grid(shown, path, nrow=nrow)}")
    if frames:
        picks = [frames[round(i * (len(frames) - 1) / 7)] for i in range(8)]  # x_t at 8 times, x_T to x_0
        m = picks[0][1].shape[0]
        cols = torch.stack([f[1] for f in picks], dim=1)  # (m, 8, C, H, W): one row per sample
        png = plots.image_grid(cols.reshape(m * 8, *cols.shape[2:]), out / f"{stem}-trajectory.png", nrow=8)
        console.print(f"trajectory ({', '.join(label for label, _ in picks)}): {png}")


def _pictures(run: Run, drawn: Samples, out: Path, stem: str) -> None:
    """2-D samples over fresh data, and the trajectory as panels and a GIF."""
    from ddpmctl import plots  # matplotlib: imported when a plot is drawn

    x, frames = drawn.x, drawn.trajectory
    data = run.dataset().fresh(len(x), 0)[0]
    png = plots.scatter_2d(x, data, out / f"{stem}.png", title=f"{run.path.name}: {stem}")
    console.print(f"plot: {png}")
    if frames:
        lim = (-float(data.abs().max()) * 1.3, float(data.abs().max()) * 1.3)
        picks = [frames[round(i * (len(frames) - 1) / 7)] for i in range(8)]  # picks[0] is frames[0]
        picks[0] = ("x_T", picks[0][1])
        grid = plots.panels_2d(picks, out / f"{stem}-trajectory.png",
                               title="reverse process: x_t from noise to data", lim=lim)
        gif = plots.gif_2d(frames, out / f"{stem}-trajectory.gif", lim=lim)
        console.print(f"trajectory: {grid}, {gif}")
