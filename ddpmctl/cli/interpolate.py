"""`ddpmctl interpolate RUN`: walk between two latents x_T (two seeds, or two real examples
encoded by DDIM inversion), decoded with deterministic DDIM; a PNG strip (or paths in 2-D)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ddpmctl.cli.common import console, load_run
from ddpmctl.config import MAX_SEED
from ddpmctl.errors import OptionsError
from ddpmctl.outputs import FIGURE, IMAGE, check_file, check_folder

if TYPE_CHECKING:
    import torch

    from ddpmctl.pipeline import Model


def _pair(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise OptionsError(f"{what} must be two integers separated by a comma, like 0,1; got {text!r}.") from None
    return a, b


def interpolate(
    run: Annotated[Path, typer.Argument(help="Run directory made by `ddpmctl train`.")],
    seeds: Annotated[str, typer.Option(help="Two seeds A,B whose noise x_T is interpolated.")] = "0,1",
    images: Annotated[Optional[str], typer.Option(help="Two dataset indices I,J: encode these real examples by DDIM inversion and interpolate between them (instead of --seeds).")] = None,
    frames: Annotated[int, typer.Option(min=2, max=64, help="Frames from one end to the other, both included.")] = 8,
    steps: Annotated[Optional[int], typer.Option(min=1, help="DDIM steps of the decoding (and of the inversion); default 50, or 1 jump for a few-step model.")] = None,
    n: Annotated[int, typer.Option(min=1, max=5000, help="2-D runs with --seeds: points whose paths are drawn.")] = 200,
    class_: Annotated[Optional[int], typer.Option("--class", min=0, help="Class label for a conditional model (default: the unconditional, null label).")] = None,
    spacing: Annotated[str, typer.Option(help="DDIM noise-level grid: auto (the process's own), uniform, quadratic, logsnr or karras.")] = "auto",
    refine: Annotated[int, typer.Option(min=0, max=20, help="With --images: fixed-point iterations per inversion step (each one network evaluation); more reconstructs the ends more exactly.")] = 3,
    clip: Annotated[Optional[float], typer.Option(min=0, help="Clamp x0_hat to [-CLIP, CLIP] at every step; 0 turns clipping off (default: [-1, 1] for images, 1.25 x the data range for 2-D).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="PNG path (default: RUN/interpolate/...).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
):
    """Interpolate between two seeds (slerp of x_T) or two real examples (DDIM inversion, slerp, decode)."""
    import torch

    from ddpmctl.interpolation import encode, interpolate as walk
    from ddpmctl.samplers.base import SPACINGS

    run_ = load_run(run, device)
    model = run_.model
    few_step = model.method is not None  # decoded with its own jumps
    steps = steps or (1 if few_step else 50)
    run_.check_steps(steps)
    if few_step and images is not None:
        teacher = f", or interpolate its teacher {model.config.teacher}" if model.config.teacher else ""
        raise OptionsError(f"--images encodes real examples by DDIM inversion, which needs a diffusion model, and {model.run.path} is a few-step model; use --seeds{teacher}.")
    if spacing not in ("auto", *SPACINGS):
        raise OptionsError(f"unknown --spacing {spacing!r}; use auto, {', '.join(SPACINGS)}.")
    y1 = _label(model, class_)
    den = model.denoiser(clip_x0=clip)
    shape = model.shape  # what the network denoises: a latent model's latents
    points = model.data.kind == "points"
    dest = model.run.path / "interpolate"
    if out is not None:  # a plot of paths (2-D) or an image strip, checked before any sampling
        check_file(out, "--out", FIGURE if points else IMAGE)
    else:
        check_folder(dest, "the interpolation folder")

    real = None
    if images is not None:
        i, j = _pair(images, "--images")
        ds = model.dataset()
        for k in (i, j):
            if not 0 <= k < len(ds):
                raise OptionsError(f"--images index {k} is out of range; the dataset has {len(ds)} examples (0 to {len(ds) - 1}).")
        real = ds.x[[i, j]].to(model.device)
        x0 = real if model.autoencoder is None else model.autoencoder.encode(real)  # a latent model inverts the images' latents
        y = None if y1 is None else y1.expand(2)
        z = encode(den, x0, steps, y, spacing, refine)  # (2, *shape)
        z0, z1, y = z[:1], z[1:], None if y1 is None else y1
        stem = f"images-{i}-{j}-{steps}steps"
    else:
        a, b = _pair(seeds, "--seeds")
        for seed in (a, b):
            if not 0 <= seed <= MAX_SEED:
                raise OptionsError(f"--seeds {seed} is outside 0..{MAX_SEED}; choose seeds in that range.")
        rows = n if points else 1
        z0 = torch.randn((rows, *shape), generator=torch.Generator().manual_seed(a)).to(model.device)
        z1 = torch.randn((rows, *shape), generator=torch.Generator().manual_seed(b)).to(model.device)
        y = None if y1 is None else y1.expand(rows)
        stem = f"seeds-{a}-{b}-{steps}steps"
    if class_ is not None:
        stem += f"-class{class_}"

    x = walk(den, z0, z1, frames, steps, y, spacing, few_step)  # (K, B, *shape)
    x = model.decode(x.flatten(0, 1)).unflatten(0, x.shape[:2]).float().cpu()  # (K, B, *image shape)
    _draw(model, x, real, out or dest / f"{stem}.png", stem, frames)


def _draw(model: Model, x: torch.Tensor, real: Optional[torch.Tensor], path: Path, stem: str, frames: int) -> None:
    """The walk as paths over the data (2-D) or a strip of images, the real ends beside it."""
    import torch

    from ddpmctl import plots  # matplotlib: imported when a plot is drawn

    if model.data.kind == "points":
        data = model.dataset().fresh(2000, 0)[0]
        plots.paths_2d(x, data, path, title=f"{model.run.path.name}: {stem}, {frames} frames (DDIM, slerp of x_T)",
                       ends=None if real is None else real.float().cpu())
    else:
        strip = x[:, 0]
        if real is not None:  # the real ends beside their reconstructions
            strip = torch.cat([real[:1].float().cpu(), strip, real[1:].float().cpu()])
        plots.image_grid(strip, path, nrow=len(strip))
    console.print(f"saved {path}")
    if real is not None:
        err = torch.stack([(x[0, 0] - real[0].cpu()).abs().max(), (x[-1, 0] - real[1].cpu()).abs().max()])
        console.print(f"reconstruction of the two ends (invert, then decode): max |error| {float(err.max()):.3g}")


def _label(model: Model, class_: Optional[int]) -> Optional[torch.Tensor]:
    """The label row for a conditional model: --class, or the null label; None when unconditional."""
    import torch

    k = model.num_classes
    if k == 0:
        if class_ is not None:
            raise OptionsError(f"--class was given but {model.run.path} is not a class-conditional model; drop --class.")
        return None
    if class_ is not None and class_ >= k:
        raise OptionsError(f"--class {class_} is out of range; this model has classes 0 to {k - 1}.")
    return torch.tensor([k if class_ is None else class_], device=model.device)
