"""Image datasets beyond MNIST: CIFAR-10, any folder of images, and the emoji32 set.

All give NCHW float32 in [-1, 1] with ``kind = "images"``, and cache the decoded, resized
tensors as safetensors under ``<data dir>/cache/``.

- ``cifar10``: 32x32 RGB in ten classes, read from the *binary* version of CIFAR-10
  (``<data dir>/cifar-10-batches-bin/``), which is plain bytes; the Python version that
  torchvision's ``CIFAR10`` class reads is pickled, and ddpmctl never unpickles files.
  ``fresh`` draws from the other split.
- ``imagefolder``: every PNG/JPEG/BMP/GIF/WebP/TIFF under ``root``. When the images sit in
  subfolders of ``root`` (``root/cat/1.png``), each subfolder is a class (sorted by name);
  otherwise the data has no labels. Images are resized (``fit = "resize"``, aspect not kept) or
  centre-cropped to a square and then resized (``fit = "crop"``), in gray or RGB. ``fresh``
  draws from a held-out fraction (``held_out``, chosen with a fixed seed and never trained on);
  with ``held_out = 0`` (the default) it draws a random subset of the training images, so a
  metric floor then compares overlapping sets.
- ``emoji32``: ``imagefolder`` on ``<data dir>/emoji32`` (import it with
  ``ddpmctl data fetch emoji32 --from DIR``), 32x32 RGB, no labels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field

from ddpmctl.config import data_dir
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.datasets.base import Dataset, draw, to_float
from ddpmctl.datasets.mnist import parse_classes
from ddpmctl.errors import DataError
from ddpmctl.registry import PluginOptions, with_options

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_HELD_OUT_SEED = 20200619  # fixed: the held-out images never change between runs


def _save_cache(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save(tensors, metadata=meta))


def _load_cache(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception:  # a damaged cache is rebuilt
        return None


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # of cifar-10-binary.tar.gz
CIFAR10_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_missing(root: Path) -> DataError:
    return DataError(
        f"CIFAR-10 is not in {root / CIFAR10_FOLDER}; download it with `ddpmctl data fetch cifar10`, "
        "or import cifar-10-binary.tar.gz (or its extracted folder) with `ddpmctl data fetch cifar10 --from DIR`."
    )


def cifar10_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) and int64 labels of one split of the binary CIFAR-10."""
    root = data_dir()
    folder = root / CIFAR10_FOLDER
    files = [folder / f for f in CIFAR10_FILES[split]]
    if not all(f.is_file() for f in files):
        raise cifar10_missing(root)
    cache = root / "cache" / f"cifar10-{split}.safetensors"
    hit = _load_cache(cache)
    if hit is not None:
        return hit["x"], hit["y"]
    parts = []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size % CIFAR10_RECORD:
            raise DataError(f"{f} is not a CIFAR-10 binary batch (its size is not a multiple of {CIFAR10_RECORD} bytes); fetch it again.")
        parts.append(raw.reshape(-1, CIFAR10_RECORD))
    rec = torch.from_numpy(np.concatenate(parts))
    x = rec[:, 1:].reshape(-1, 3, 32, 32).contiguous()
    y = rec[:, 0].long()
    _save_cache(cache, {"x": x, "y": y}, {"name": "cifar10", "split": split})
    return x, y


class CIFAR10Options(PluginOptions):
    classes: Optional[Union[int, str, list[int]]] = Field(None, description="keep only these classes 0-9, e.g. '3,5' (default: all ten)")
    split: Literal["train", "test"] = Field("train", description="which split to train on; fresh() draws from the other one")


@with_options(CIFAR10Options)
def CIFAR10(classes=None, split: str = "train") -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 32x32 RGB in ten classes, read from its binary version."""
    chosen = parse_classes(classes, "class")

    def pick(s):
        x, y = cifar10_split(s)
        if chosen is None:
            return x, y
        keep = torch.isin(y, torch.tensor(chosen))
        return x[keep], y[keep]

    x, y = pick(split)
    held: dict = {}

    def fresh(n, seed):
        if "x" not in held:
            held["x"], held["y"] = pick("test" if split == "train" else "train")
        return draw(held["x"], held["y"], n, seed)

    return Dataset(name="cifar10", x=to_float(x), y=y, num_classes=10, kind="images", fresh_fn=fresh,
                   info={"split": split, "classes": chosen, "class_names": CIFAR10_CLASSES})


# --------------------------------------------------------------------------------------------
# Any folder of images
# --------------------------------------------------------------------------------------------
class ImageFolderOptions(PluginOptions):
    root: str = Field(..., description="folder of images; subfolders, if the images are in them, are the classes")
    size: int = Field(32, ge=4, le=512, description="image side after resizing")
    mode: Literal["rgb", "gray"] = Field("rgb", description="colour (3 channels) or grayscale (1)")
    fit: Literal["resize", "crop"] = Field("resize", description="resize the whole image to size x size, or centre-crop a square first")
    held_out: float = Field(0.0, ge=0, lt=1, description="fraction held out (fixed seed) for fresh draws; 0: fresh draws come from the training images")


def _list_images(root: Path) -> tuple[list[Path], list[str] | None]:
    """Image files under root, and the class names when every image sits in a subfolder."""
    if not root.exists():
        raise DataError(f"image folder {root} does not exist; check the path (data option root).")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; the imagefolder dataset needs a folder of images (data option root).")
    try:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise DataError(f"image folder {root} cannot be read ({exc.strerror or exc}); check its permissions.") from None
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"image folder {root} cannot be read; check its permissions.")
    if not files:
        raise DataError(f"image folder {root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); point root at a folder that has some.")
    in_sub = [p.relative_to(root).parts for p in files]
    if all(len(parts) >= 2 for parts in in_sub):
        classes = sorted({parts[0] for parts in in_sub})
        empty = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in classes)
        if empty:  # a class without images would silently leave the model a class short
            raise DataError(f"class folder {root / empty[0]} has no images, so the data would have {len(classes)} classes instead of "
                            f"{len(classes) + len(empty)}; add images to it or remove it.")
        return files, classes
    return files, None


def _decode(path: Path, size: int, mode: str, fit: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P") and mode == "rgb":  # composite transparency on white
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB" if mode == "rgb" else "L")
            if fit == "crop":
                im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS)
            elif im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"image {path} cannot be read ({exc}); remove or replace it.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def load_folder(root: Path, size: int, mode: str, fit: str) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """uint8 (N, C, size, size), labels (or None) and class names, cached by content stamp."""
    root = Path(root).expanduser()
    files, classes = _list_images(root)
    stamp = hashlib.sha256()
    stamp.update(f"{root.resolve()}|{size}|{mode}|{fit}".encode())
    for p in files:
        st = p.stat()
        stamp.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = data_dir() / "cache" / f"imagefolder-{stamp.hexdigest()[:20]}.safetensors"
    hit = _load_cache(cache)
    if hit is not None:
        return hit["x"], hit.get("y"), classes
    x = torch.from_numpy(np.ascontiguousarray(np.stack([_decode(p, size, mode, fit) for p in files])))
    y = None
    tensors = {"x": x}
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[p.relative_to(root).parts[0]] for p in files], dtype=torch.long)
        tensors["y"] = y
    try:
        _save_cache(cache, tensors, {"root": str(root.resolve()), "size": str(size), "mode": mode, "fit": fit})
    except OSError:
        pass  # a read-only data dir only costs the speed-up
    return x, y, classes


def image_folder(label: str, root, size=32, mode="rgb", fit="resize", held_out=0.0) -> Dataset:
    x, y, classes = load_folder(Path(root), size, mode, fit)
    n_held = int(round(held_out * len(x)))
    if held_out > 0 and not 1 <= n_held < len(x):
        raise DataError(f"held_out {held_out} of {len(x)} images leaves no images to hold out or to train on; choose another fraction.")
    hx = hy = None
    if n_held:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_HELD_OUT_SEED))
        held, kept = perm[:n_held].sort().values, perm[n_held:].sort().values
        hx, hy = x[held], (None if y is None else y[held])
        x, y = x[kept], (None if y is None else y[kept])
    source_x, source_y = (hx, hy) if n_held else (x, y)

    def fresh(n, seed):
        return draw(source_x, source_y, n, seed)

    return Dataset(
        name=label, x=to_float(x), y=y, num_classes=len(classes) if classes else 0, kind="images", fresh_fn=fresh,
        info={"root": str(root), "classes": classes, "held_out": n_held},
    )


@with_options(ImageFolderOptions)
def ImageFolder(root: str, size: int = 32, mode: str = "rgb", fit: str = "resize", held_out: float = 0.0) -> Dataset:
    """Any folder of images, resized or centre-cropped to size x size, gray or RGB; subfolders are classes."""
    return image_folder("imagefolder", root, size, mode, fit, held_out)


class Emoji32Options(PluginOptions):
    root: Optional[str] = Field(None, description="folder of the emoji PNGs (default: <data dir>/emoji32)")
    held_out: float = Field(0.0, ge=0, lt=1, description="fraction held out (fixed seed) for fresh draws")


def emoji32_missing(root: Path) -> DataError:
    return DataError(
        f"emoji32 is not in {root}; it has no download: import the folder of PNGs with "
        "`ddpmctl data fetch emoji32 --from DIR`, or use --data imagefolder -o data.root=DIR."
    )


@with_options(Emoji32Options)
def Emoji32(root: Optional[str] = None, held_out: float = 0.0) -> Dataset:
    """Noto Color Emoji rendered at 32x32 RGB on white (1,401 images, no labels)."""
    path = Path(root).expanduser() if root else data_dir() / "emoji32"
    if root is None and not path.is_dir():
        raise emoji32_missing(path)
    return image_folder("emoji32", path, 32, "rgb", "resize", held_out)
