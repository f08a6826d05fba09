"""Memorisation: how close each sample lies to its nearest training image, against held-out real images.

A model that generalises puts its samples about as far from the training set as new real
images are; one that memorises puts many of them closer than almost any held-out image is.
Distances are L2 in pixel space ([-1, 1]). The held-out images (``dataset.fresh``) are split in
two halves: the first sets the threshold (its 1st-percentile nearest-training distance), the
second is the floor (about 1% of it falls below by construction). The check is flagged when
the fraction of samples under the threshold exceeds ``flag_fraction``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from pydantic import Field

from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import DataError
from ddpmctl.metrics.base import MetricResult
from ddpmctl.metrics.fid import as_images, held_out
from ddpmctl.metrics.inception import Progress, pick_device
from ddpmctl.outputs import save_figure
from ddpmctl.registry import PluginOptions, with_options


def nearest(queries: torch.Tensor, train: torch.Tensor, device: torch.device, chunk: int = 4096, progress: Progress = None, what: str = "nearest training images") -> tuple[np.ndarray, np.ndarray]:
    """For each query (N, ...), the L2 distance to its nearest row of ``train`` (M, ...) and that row's index."""
    q = queries.reshape(len(queries), -1).to(device, torch.float32)
    best_d2 = torch.full((len(q),), float("inf"), device=device)
    best_i = torch.zeros(len(q), dtype=torch.long, device=device)
    q2 = (q * q).sum(1, keepdim=True)  # (N, 1)
    with torch.inference_mode():
        for start in range(0, len(train), chunk):
            t = train[start : start + chunk].reshape(-1, q.shape[1]).to(device, torch.float32)
            d2 = q2 - 2 * q @ t.T + (t * t).sum(1)[None]  # |q - t|^2, (N, chunk)
            d, i = d2.min(dim=1)
            better = d < best_d2
            best_d2 = torch.where(better, d, best_d2)
            best_i = torch.where(better, i + start, best_i)
            if progress is not None:
                progress(what, min(start + chunk, len(train)), len(train))
        # the expansion above loses precision for near-copies: recompute the winners exactly
        exact = (q - train[best_i.cpu()].reshape(len(q), -1).to(device, torch.float32)).norm(dim=1)
    return exact.double().cpu().numpy(), best_i.cpu().numpy()


def summary(d: np.ndarray, threshold: float) -> dict[str, float]:
    return {
        "median distance": float(np.median(d)),
        "q01 distance": float(np.quantile(d, 0.01)),
        "q05 distance": float(np.quantile(d, 0.05)),
        "q25 distance": float(np.quantile(d, 0.25)),
        "fraction under held-out q01": float(np.mean(d < threshold)),
    }


def save_pairs(path: Path, samples: torch.Tensor, neighbours: torch.Tensor, distances: np.ndarray, title: str) -> Path:
    """A PNG: samples (top row of each pair) above their nearest training images, with the distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(samples)
    cols = min(k, 8)
    rows = 2 * ((k + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j in range(k):
        r, c = 2 * (j // cols), j % cols
        for ax, img in ((axes[r, c], samples[j]), (axes[r + 1, c], neighbours[j])):
            img = ((img.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
        axes[r, c].set_title(f"sample, d={distances[j]:.2f}", fontsize=7)
        axes[r + 1, c].set_title("nearest train", fontsize=7)
    fig.suptitle(title, fontsize=9)
    try:
        return save_figure(fig, Path(path), dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


class MemorisationOptions(PluginOptions):
    ref_seed: int = Field(0, ge=0, description="seed of the held-out real images")
    flag_fraction: float = Field(0.05, gt=0, le=1, description="flag when more than this fraction of samples lies closer to the training set than 99% of held-out images")
    png: Optional[Path] = Field(None, description="write a PNG of the closest samples beside their nearest training images here")
    show: int = Field(16, ge=1, le=128, description="pairs listed in the protocol and drawn in the PNG (the closest samples)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


@with_options(MemorisationOptions)
def memorisation(samples: torch.Tensor, dataset: Dataset, ref_seed=0, flag_fraction=0.05, png=None, show=16, device="auto", progress: Progress = None) -> MetricResult:
    """Distance of each sample to its nearest training image, against held-out real images; flags copying."""
    samples = as_images(samples, dataset)
    n = len(samples)
    if n < 2:
        raise DataError("memorisation needs at least 2 samples; evaluate more.")
    dev = pick_device(device)
    # As many held-out images as samples (at least 200), or all the split has: a reference, not a same-size floor.
    held, _ = held_out(dataset, max(200, n), ref_seed, fewer_ok=True)
    if len(held) < 20:
        raise DataError(f"memorisation needs at least 20 held-out images of {dataset.name} for its threshold, and the split has {len(held)}; use a dataset with a larger held-out split.")
    d_held, _ = nearest(held, dataset.x, dev, progress=progress, what="nearest training images of held-out images")
    d_a, d_b = d_held[: len(held) // 2], d_held[len(held) // 2 :]
    d_s, idx = nearest(samples, dataset.x, dev, progress=progress, what="nearest training images of samples")
    threshold = float(np.quantile(d_a, 0.01))
    values, floor = summary(d_s, threshold), summary(d_b, threshold)
    values["flagged"] = float(values["fraction under held-out q01"] > flag_fraction)
    floor["flagged"] = float(floor["fraction under held-out q01"] > flag_fraction)
    order = np.argsort(d_s)[:show]
    pairs = [{"sample": int(i), "train": int(idx[i]), "distance": round(float(d_s[i]), 4)} for i in order]
    warnings = []
    if values["flagged"]:
        warnings.append(
            f"memorisation: {values['fraction under held-out q01']:.1%} of samples lie closer to a training image than 99% of held-out images do "
            f"(expected about 1%, flagged above {flag_fraction:.0%})"
        )
    written = None
    if png is not None:
        written = str(save_pairs(png, samples[order].cpu(), dataset.x[idx[order]].cpu(), d_s[order], f"{dataset.name}: the {len(order)} samples closest to the training set (L2, held-out q01 = {threshold:.2f})"))
    return MetricResult(
        metric="memorisation",
        values=values,
        floor=floor,
        protocol={
            "n": n,
            "n_train": len(dataset),
            "n_held_out": {"threshold": len(d_a), "floor": len(d_b)},
            "distance": "L2 in pixel space, images in [-1, 1]",
            "threshold": {"held-out q01 distance": threshold, "set": "first half of dataset.fresh", "seed": ref_seed},
            "floor_set": "second half of dataset.fresh (about 1% of it falls under the threshold by construction)",
            "flag_rule": f"fraction of samples under the threshold > {flag_fraction}",
            "closest_pairs": pairs,
            "png": written,
            "warnings": warnings,
        },
    )
