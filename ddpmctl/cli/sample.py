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
from ddpmctl.cli.common import check_steps, console, load_run, parse_options
from ddpmctl.errors import OptionsError
from ddpmctl.datasets.base import to_uint8
from ddpmctl.export import check_target, write as write_export
from ddpmctl.pipeline import Model, sample as draw


def sample(
    run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")],
    n: Annotated[Optional[int], typer.Option(min=1, help="Number of samples (default: 2000 for 2-D data, 64 for images).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed: sample i depends only on (seed, i).")] = 0,
    sampler: Annotated[str, typer.Option(help="Sampler plugin (see `ddpmctl plugins list --kind sampler`).")] = "ddpm",
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
    model = load_run(run, device, compile=compile)
    check_steps(steps, model.schedule.T)
    images = model.data["kind"] == "images"
    if export is not None:
        check_target(export)
        if not images:
            raise OptionsError(f"--export writes image files, but {model.run.path} is a model of 2-D points; use the .npz that `ddpmctl sample` writes.")
    if per_class is not None:
        if model.num_classes == 0:
            raise OptionsError(f"--per-class needs a class-conditional model, but {model.run.path} was trained without --cond class; use --n, or train with --cond class.")
        if n is not None:
            raise OptionsError("--n and --per-class both set the number of samples; pass only one of them.")
        labels = torch.tensor(_chosen(model, classes)).repeat_interleave(per_class)  # K of each class, in blocks
        n = len(labels)
    n = n or (64 if images else 2000)
    batch_size = batch_size or (256 if images else 2048)
    if per_class is None:
        labels = _labels(model, classes, guidance, n)
    sampler_opts = parse_options(option)
    registry.validate_options("sampler", sampler, sampler_opts)
    out = out or model.run.path / "samples"
    stem = f"{sampler}-{steps or model.schedule.T}steps-seed{seed}" + _label_stem(classes, guidance, labels)
    stem += f"-{per_class}perclass" if per_class else ""

    frames: list[tuple[str, torch.Tensor]] = []
    keep_every = None

    def record(i, S, t, x_t, x0_hat):
        nonlocal keep_every
        keep_every = keep_every or max(1, S // 40)
        if i == 1 or i % keep_every == 0 or i == S:
            frames.append((f"t = {t}" if i < S else "t = 0 (x_0)", (x_t[:8] if images else x_t).float().cpu()))

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"sampling {n} with {sampler}", total=n)
        x, rec = draw(model, n, sampler, steps, seed, sampler_opts, batch_size, labels=labels, guidance=guidance,
                      clip_x0=clip, dynamic_threshold=dynamic_threshold, callback=record if trajectory else None, on_batch=lambda b: bar.advance(task, b))

    out.mkdir(parents=True, exist_ok=True)
    npz = out / f"{stem}.npz"
    if images:  # uint8 pixels, (N, C, H, W), as the data: round((x + 1) * 127.5)
        rec = {**rec, "format": "uint8 NCHW, x = pixel / 127.5 - 1", "classes": None if labels is None else sorted(set(labels.tolist()))}
        extra = {} if labels is None else {"labels": labels.numpy()}
        np.savez(npz, samples=to_uint8(x).numpy(), record=json.dumps(rec), **extra)
    else:
        np.savez(npz, samples=x.numpy(), record=json.dumps(rec))
    console.print(f"samples: {npz}  ({rec['nfe']} network evaluations per sample)")
    if export is not None:
        _export(model, x, labels, rec, export, per_class)
    _pictures(model, x, frames, out, stem)
    if images:
        _image_pictures(x, labels, frames, out, stem, grid)


def _labels(model: Model, classes: Optional[list[str]], guidance: float, n: int) -> Optional[torch.Tensor]:
    """The label of each sample: the requested classes in equal contiguous blocks; without --class,
    None (the null label: unconditional) or, with --guidance, all classes."""
    k = model.num_classes
    if k == 0:
        if classes:
            raise OptionsError(f"--class needs a class-conditional model, but {model.run.path} was trained without --cond class; drop --class or train with --cond class.")
        if guidance != 1.0:
            raise OptionsError(f"--guidance needs a class-conditional model, but {model.run.path} was trained without --cond class; drop --guidance or train with --cond class.")
        return None
    if not classes and guidance == 1.0:
        return None
    chosen = _chosen(model, classes)
    per = torch.arange(n) * len(chosen) // n  # sample i gets class chosen[i * K // n]
    return torch.tensor(chosen)[per]


def _chosen(model: Model, classes: Optional[list[str]]) -> list[int]:
    """The classes of --class (repeatable or comma lists), checked; all of the model's without it."""
    k = model.num_classes
    chosen: list[int] = []
    for item in classes or [str(c) for c in range(k)]:
        for part in item.replace(" ", "").split(","):
            if not part:
                continue
            if not part.lstrip("-").isdigit() or not 0 <= int(part) < k:
                raise OptionsError(f"--class {part} is not a class of this model; use classes 0 to {k - 1}.")
            chosen.append(int(part))
    if not chosen:
        raise OptionsError(f"--class was given no class; use classes 0 to {k - 1}, e.g. --class 7 or --class 1,2.")
    return chosen


def _export(model: Model, x: torch.Tensor, labels, rec: dict, folder: Path, per_class: Optional[int]) -> None:
    """The samples as a labelled image folder with a manifest of how they were drawn."""
    from ddpmctl.pipeline import versions

    cfg = model.config
    manifest = {
        "run": str(model.run.path.resolve()), "model": {k: cfg.get(k) for k in ("data", "data_options", "network", "cond", "prediction")},
        "checkpoint_step": model.step, "sampler": rec["sampler"], "steps": rec["steps"], "seed": rec["seed"],
        "seeds": f"image <index> draws its noise from torch.Generator().manual_seed({rec['seed']} * 1000003 + index // 16) (ddpmctl.pipeline.block_generators)",
        "guidance": rec["guidance"], "per_class": per_class, "sampling": rec, "versions": versions(),
    }
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"writing {len(x)} PNGs", total=len(x))
        path = write_export(folder, to_uint8(x), labels, model.num_classes, manifest, on_image=lambda k: bar.advance(task, k))
    what = f"{len(x)} images" + ("" if labels is None else f" in {len(set(labels.tolist()))} class folders")
    console.print(f"export: {folder} ({what}; {path.name})")


def _label_stem(classes, guidance: float, labels) -> str:
    stem = ""
    if classes:
        stem += "-class" + "_".join(str(c) for c in sorted(set(labels.tolist())))
    if guidance != 1.0:
        stem += f"-w{guidance:g}"
    return stem


def _image_pictures(x: torch.Tensor, labels, frames, out: Path, stem: str, grid: Optional[Path]) -> None:
    """A PNG grid of the samples (one row per class block when they fit), and of the trajectory."""
    from ddpmctl import plots

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


def _pictures(model: Model, x: torch.Tensor, frames, out: Path, stem: str) -> None:
    from ddpmctl import plots

    if model.data["kind"] == "points":
        data = model.dataset().fresh(len(x), 0)[0]
        png = plots.scatter_2d(x, data, out / f"{stem}.png", title=f"{model.run.path.name}: {stem}")
        console.print(f"plot: {png}")
        if frames:
            lim = (-float(data.abs().max()) * 1.3, float(data.abs().max()) * 1.3)
            picks = [frames[round(i * (len(frames) - 1) / 7)] for i in range(8)]  # picks[0] is frames[0]
            picks[0] = ("x_T", picks[0][1])
            grid = plots.panels_2d(picks, out / f"{stem}-trajectory.png",
                                   title="reverse process: x_t from noise to data", lim=lim)
            gif = plots.gif_2d(frames, out / f"{stem}-trajectory.gif", lim=lim)
            console.print(f"trajectory: {grid}, {gif}")
