"""PNG (and GIF) figures: loss curves, 2-D samples over data, trajectories, the forward process."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ddpmctl.outputs import save_figure, save_image  # noqa: E402


def _save(fig, path: Path) -> Path:
    """The figure, written atomically (outputs.save_figure), then closed."""
    try:
        return save_figure(fig, path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def _smooth(v: np.ndarray, k: int) -> np.ndarray:
    if len(v) < k or k < 2:
        return v
    return np.convolve(v, np.ones(k) / k, mode="valid")


def loss_curve(records: Sequence[dict], path: Path, title: str = "") -> Path:
    recs = [r for r in records if "loss" in r]
    steps = np.array([r["step"] for r in recs])
    loss = np.array([r["loss"] for r in recs])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.35, lw=1, label="loss")
    k = max(1, len(loss) // 20)
    if k > 1:
        ax.plot(steps[k - 1 :], _smooth(loss, k), lw=2, label=f"moving mean ({k} records)")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title or "training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _lim(data: np.ndarray) -> tuple[float, float]:
    r = float(np.abs(data).max()) * 1.1
    return -r, r


def scatter_2d(samples: torch.Tensor, data: torch.Tensor, path: Path, title: str = "") -> Path:
    s, d = samples.numpy(), data.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, name, color in ((axes[0], d, "data", "tab:blue"), (axes[1], s, "samples", "tab:orange")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=color)
        ax.set_title(f"{name} (n={len(pts)})")
        ax.set_aspect("equal")
    lo, hi = _lim(d)
    axes[0].set_xlim(lo, hi)
    axes[0].set_ylim(lo, hi)
    fig.suptitle(title)
    return _save(fig, path)


def _frame_2d(ax, x: np.ndarray, lim, title: str):
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color="tab:orange")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def panels_2d(frames: Sequence[tuple[str, torch.Tensor]], path: Path, title: str = "", lim=None) -> Path:
    """A row (or grid) of 2-D scatter panels, one per (label, points)."""
    n = len(frames)
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    if lim is None:
        lim = (-4.0, 4.0)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (label, x) in zip(axes.flat, frames):
        _frame_2d(ax, x.numpy(), lim, label)
    fig.suptitle(title)
    return _save(fig, path)


def gif_2d(frames: Sequence[tuple[str, torch.Tensor]], path: Path, lim=(-4.0, 4.0), ms_per_frame: int = 120) -> Path:
    images = []
    for label, x in frames:
        fig, ax = plt.subplots(figsize=(3.2, 3.2))
        _frame_2d(ax, x.numpy(), lim, label)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        buf.seek(0)
        images.append(Image.open(buf).convert("P", palette=Image.ADAPTIVE))
    # hold the last frame a little longer
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 8]
    return save_image(images[0], path, save_all=True, append_images=images[1:], duration=durations, loop=0)


def image_grid(images: torch.Tensor, path: Path, nrow: int | None = None, pad: int = 1) -> Path:
    """Save images in [-1, 1], (N, C, H, W), as one PNG grid."""
    import torchvision.utils as vutils

    nrow = nrow or int(np.ceil(np.sqrt(images.shape[0])))
    grid = vutils.make_grid(((images.clamp(-1, 1) + 1) / 2).float(), nrow=nrow, padding=pad, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return save_image(Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr), path)


def quality_vs_nfe(rows: Sequence[dict], keys: Sequence[str], floors: dict, path: Path, title: str = "") -> Path:
    """Metric against network evaluations (log x), one line per sampler, one panel per metric
    key, the real-vs-real floor as a dashed line."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    for ax, key in zip(axes.flat, keys):
        for name in samplers:
            pts = sorted((r["nfe"], r[key]) for r in rows if r["sampler"] == name and np.isfinite(r.get(key, np.nan)))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        if key in floors and np.isfinite(floors[key]):
            ax.axhline(floors[key], ls="--", color="gray", label="floor (real vs real)")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def paths_2d(paths: torch.Tensor, data: torch.Tensor, path: Path, title: str = "", ends: torch.Tensor | None = None) -> Path:
    """Paths of 2-D points, (K, B, 2): each of B points along K frames, over the data in gray;
    ``ends`` (2, 2), when given, are marked as the two real points interpolated between."""
    p, d = paths.numpy(), data.numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(d[:, 0], d[:, 1], s=1, alpha=0.2, color="gray")
    for b in range(p.shape[1]):
        ax.plot(p[:, b, 0], p[:, b, 1], lw=0.8, alpha=0.6, color=plt.cm.viridis(b / max(1, p.shape[1] - 1)))
    ax.scatter(p[0, :, 0], p[0, :, 1], s=8, marker="o", color="tab:blue", label="first frame", zorder=3)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=10, marker="x", color="tab:red", label="last frame", zorder=3)
    if ends is not None:
        e = ends.numpy()
        ax.scatter(e[:, 0], e[:, 1], s=60, marker="*", color="black", label="real points", zorder=4)
    lo, hi = _lim(d)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def convergence(runs: Sequence[tuple[str, Sequence[dict]]], key: str | None, path: Path, title: str = "", lines: dict | None = None,
                window: int = 5) -> Path:
    """Loss and quality ``key`` against training steps (left) and wall time (right), one colour
    per run, from metrics.jsonl records: the logged loss faint, its moving mean over ``window``
    records bold, each evaluation a marker. ``lines``: {"loss": X, "metric": threshold} dashed."""
    lines = lines or {}
    rows = 2 if key else 1
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.6 * rows), squeeze=False)
    for i, (label, records) in enumerate(runs):
        color = f"C{i % 10}"
        raw = [(r["step"], r["time"], r["loss"]) for r in records if "loss" in r]
        losses = [p[2] for p in raw]
        smooth = [(*p[:2], float(np.mean(losses[max(0, j + 1 - window) : j + 1]))) for j, p in enumerate(raw)]
        quality = [(r["step"], r["time"], r["values"][key]) for r in records if r.get("event") == "eval" and key in r.get("values", {})]
        for col in (0, 1):  # 0: steps, 1: wall time
            ax = axes[0, col]
            if raw:
                ax.plot([p[col] for p in raw], [p[2] for p in raw], color=color, alpha=0.35, lw=1)
            if smooth:
                ax.plot([p[col] for p in smooth], [p[2] for p in smooth], color=color, lw=2, label=label)
            if key and quality:
                axes[1, col].plot([p[col] for p in quality], [p[2] for p in quality], color=color, marker="o", ms=3, lw=1.5, label=label)
    axes[0, 0].set_ylabel("loss")
    axes[0, 0].set_title(f"loss (faint: each logged; bold: mean of the last {window}, fewer at the start)", fontsize=9)
    for col, xlabel in ((0, "training step"), (1, "wall time (s, evaluations included)")):
        axes[0, col].set_yscale("log")
        if "loss" in lines:
            axes[0, col].axhline(lines["loss"], ls="--", color="gray", label=f"until loss <= {lines['loss']:g}")
        if key:
            axes[1, 0].set_ylabel(key)
            values = [v for line in axes[1, col].get_lines() for v in line.get_ydata()]
            if values and min(values) > 0 and max(values) > 20 * min(values):  # the untrained first evaluation dwarfs the rest
                axes[1, col].set_yscale("log")
            if "metric" in lines:
                axes[1, col].axhline(lines["metric"].value, ls="--", color="gray", label=f"{lines['metric']}")
        for ax in axes[:, col]:
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def image_rows(rows: Sequence[tuple[str, torch.Tensor]], path: Path, title: str = "") -> Path:
    """One row of images in [-1, 1] per (label, images (N, C, H, W)), the label at its left."""
    import torchvision.utils as vutils

    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 0.95 * len(rows) + 0.6), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        grid = vutils.make_grid(((images.clamp(-1, 1) + 1) / 2).float(), nrow=len(images), padding=1, pad_value=1.0)
        arr = grid.permute(1, 2, 0).numpy()
        ax.imshow(arr[..., 0] if images.shape[1] == 1 else arr, cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label.replace("\n", " "), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def jump_map_2d(noise: torch.Tensor, ends: torch.Tensor, data: torch.Tensor, path: Path, paths: torch.Tensor | None = None,
                title: str = "", jump: str = "one step") -> Path:
    """A one-step model's map of 2-D points: an arrow from each noise point (B, 2) to its sample
    (B, 2), over the data in gray; with ``paths`` (K, B, 2), the teacher's ODE trajectories from the
    same noise drawn beside it (left), so the two maps can be compared point by point."""
    d, z, e = data.numpy(), noise.numpy(), ends.numpy()
    panels = 1 if paths is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5), sharex=True, sharey=True, squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 1, len(z)))
    order = np.argsort(np.arctan2(z[:, 1], z[:, 0]))  # colour by the noise's angle: the same point has the same colour in both panels
    colors[order] = colors.copy()
    for ax in axes[0]:
        ax.scatter(d[:, 0], d[:, 1], s=1, alpha=0.15, color="gray")
        ax.scatter(z[:, 0], z[:, 1], s=6, color=colors, marker="o", zorder=3)
    if paths is not None:
        p = paths.numpy()
        ax = axes[0, 0]
        for b in range(p.shape[1]):
            ax.plot(p[:, b, 0], p[:, b, 1], lw=0.7, alpha=0.7, color=colors[b])
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=8, marker="x", color="black", lw=0.7, zorder=4)
        ax.set_title(f"teacher: probability-flow ODE ({p.shape[0] - 1} steps)", fontsize=9)
    ax = axes[0, -1]
    ax.quiver(z[:, 0], z[:, 1], e[:, 0] - z[:, 0], e[:, 1] - z[:, 1], color=colors, angles="xy", scale_units="xy", scale=1,
              width=0.003, alpha=0.8)
    ax.scatter(e[:, 0], e[:, 1], s=8, marker="x", color="black", lw=0.7, zorder=4)
    ax.set_title(f"few-step model: {jump} (arrow: noise -> sample)", fontsize=9)
    lo, hi = _lim(np.concatenate([d, z]))
    for ax in axes[0]:
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
