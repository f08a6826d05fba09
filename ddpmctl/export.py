"""Synthetic datasets: samples written as a labelled image folder that ddpmctl's ``imagefolder``
dataset and torchvision's ``ImageFolder`` both read.

    DIR/manifest.json          how the images were drawn: run, checkpoint step, sampler, steps, seed, guidance
    DIR/<class>/<index>.png    sample ``index`` (its noise depends only on (seed, index)), 8-bit PNG

Class folders are the model's class indices zero-padded to one width, so that sorting them by
name (as both readers do to number the classes) keeps the model's order. Without labels the
images lie directly in DIR. ``manifest.json`` lists every file with its index and the model's
label (the readers renumber a subset of classes 0..k-1; the manifest keeps the original).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ddpmctl.errors import DataError, OptionsError, WriteError
from ddpmctl.outputs import atomic_write_bytes, check_folder, save_image

FORMAT = "ddpmctl-synthetic/1"
MANIFEST = "manifest.json"


def check_target(path: Path) -> None:
    """An export goes to a new or empty folder that takes files, never among other files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptionsError(f"export target {path} is a file, not a folder; choose a new folder for --export.")
    if path.is_dir() and any(path.iterdir()):
        raise OptionsError(f"export folder {path} is not empty; choose a new folder for --export (an export never mixes with other files).")
    check_folder(path, "--export")


def class_folder(label: int, num_classes: int) -> str:
    """'3' among 10 classes, '03' among 12: folder names that sort in label order."""
    return f"{label:0{len(str(max(num_classes - 1, 0)))}d}"


def write(path: Path, pixels: torch.Tensor, labels: Optional[torch.Tensor], num_classes: int, manifest: dict,
          on_image: Callable[[int], None] | None = None) -> Path:
    """Write uint8 images (N, C, H, W), C = 1 or 3, as PNGs (one folder per label), then the manifest."""
    from PIL import Image

    check_target(path)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise DataError(f"only 8-bit gray or RGB images can be exported as PNG, got {pixels.dtype} of shape {tuple(pixels.shape)}.")
    path = Path(path)
    made = not path.exists()
    width = len(str(max(len(pixels) - 1, 0)))
    files = []
    try:
        for i, img in enumerate(pixels.numpy()):
            label = None if labels is None else int(labels[i])
            rel = f"{i:0{width}d}.png" if label is None else f"{class_folder(label, num_classes)}/{i:0{width}d}.png"
            arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)  # (H, W) or (H, W, 3)
            save_image(Image.fromarray(np.ascontiguousarray(arr)), path / rel, sync=False)  # each file whole or absent; the manifest comes last
            files.append({"file": rel, "index": i, "label": label})
            if on_image:
                on_image(1)
        folders = {} if labels is None else {class_folder(k, num_classes): k for k in sorted(set(labels.tolist()))}
        body = {"format": FORMAT, **manifest, "count": len(files), "classes": folders,
                "image": {"shape": list(pixels.shape[1:]), "format": "8-bit PNG, x = pixel / 127.5 - 1"}, "files": files}
        atomic_write_bytes(path / MANIFEST, json.dumps(body, indent=2).encode())
    except WriteError:  # a full disk or a read-only folder part-way: no half export is left
        _remove(path, [f["file"] for f in files], made)
        raise
    return path / MANIFEST


def _remove(path: Path, files: list[str], made: bool) -> None:
    """Remove the files an export wrote, its class folders, and ``path`` itself if it ``made`` it."""
    for rel in files:
        (path / rel).unlink(missing_ok=True)
    for folder in sorted({(path / rel).parent for rel in files} - {path}) + ([path] if made else []):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty, or already gone


def read(path: Path) -> tuple[torch.Tensor, Optional[torch.Tensor], dict]:
    """The images (uint8, N C H W), the model's labels (or None) and the manifest of an export."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise DataError(f"{path} is not an export of `ddpmctl sample --export` (it has no {MANIFEST}).")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not an export of `ddpmctl sample --export` (no readable {MANIFEST}: {exc}).") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), list) or not manifest["files"]:
        raise DataError(f"{path / MANIFEST} is not a manifest of `ddpmctl sample --export` (format {manifest.get('format')!r}).")
    c = manifest["image"]["shape"][0]
    images = []
    for entry in manifest["files"]:
        try:
            with Image.open(path / entry["file"]) as im:
                arr = np.asarray(im.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"image {path / entry['file']} of the export cannot be read ({exc}); export the samples again.") from None
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    try:
        pixels = torch.from_numpy(np.stack(images))
    except ValueError:
        raise DataError(f"the images of {path} do not all have the same size; export the samples again.") from None
    labelled = [e.get("label") for e in manifest["files"]]
    labels = None if any(v is None for v in labelled) else torch.tensor(labelled, dtype=torch.long)
    return pixels, labels, manifest
