"""MNIST and Fashion-MNIST: 28x28 gray digits (or clothes), resized to 16, 28 or 32, in [-1, 1].

The original IDX files live where torchvision expects them, ``<data dir>/MNIST/raw/`` (or
``FashionMNIST/raw/``), and are read with torchvision's dataset classes. ``ddpmctl data fetch
mnist`` downloads them, or imports them from a folder with ``--from DIR``. The resized tensors
are cached as safetensors in ``<data dir>/cache/`` so later loads take a fraction of a second.

``fresh(n, seed)`` draws from the other split (the test split when training on train), with the
same digit filter: an independent set for metric floors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.config import data_dir
from ddpmctl.datasets.base import Dataset, draw, to_float
from ddpmctl.errors import DataError
from ddpmctl.registry import PluginOptions, with_options

# name -> (torchvision class, folder under the data dir, {raw file: MD5 of the uncompressed file}).
# MNIST's MD5s are those of the original files (../shared/data/README.md); Fashion-MNIST's are
# of the uncompressed files of its original release (as packaged by Debian, dataset-fashion-mnist).
SOURCES = {
    "mnist": ("MNIST", "MNIST", {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST", {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    }),
}


def parse_classes(value, what: str = "digit") -> Optional[list[int]]:
    """'0' | '0,1,7' | 7 | [0, 1, 7] | None -> sorted list of ints in 0..9 (None: all)."""
    if value is None or value == "" or value == "all":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, str):
        items = []
        for part in value.replace(" ", "").split(","):
            if part == "":
                continue
            try:
                items.append(int(part))
            except ValueError:
                raise DataError(f"{what} {part!r} is not a number; pass {what}s from 0 to 9, for example 0 or 0,1,7.") from None
    else:
        items = list(value)
    for d in items:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 9:
            raise DataError(f"{what} {d!r} is outside 0-9; pass {what}s from 0 to 9, for example 0 or 0,1,7.")
    return sorted(set(items))


class MNIST16Options(PluginOptions):
    digits: Optional[Union[int, str, list[int]]] = Field(None, description="keep only these classes, e.g. 0 or '0,1,7' (default: all ten)")
    split: Literal["train", "test"] = Field("train", description="which split to train on; fresh() draws from the other one")

    @field_validator("digits")
    @classmethod
    def _digits(cls, v):
        parse_classes(v)  # raises DataError (one sentence) for a digit outside 0-9
        return v


class MNISTOptions(MNIST16Options):
    size: Literal[16, 28, 32] = Field(28, description="image side: 28 is the original, 16 and 32 are resized (bilinear, antialiased)")


def raw_files_present(name: str, root: Path | None = None) -> bool:
    _, folder, files = SOURCES[name]
    raw = (root or data_dir()) / folder / "raw"
    return all((raw / f).is_file() for f in files)


def _missing(name: str, root: Path) -> DataError:
    _, folder, _ = SOURCES[name]
    return DataError(
        f"{name} is not in {root / folder / 'raw'}; download it with `ddpmctl data fetch {name}`, "
        f"or import the original files with `ddpmctl data fetch {name} --from DIR`."
    )


def _cache_key(name: str, split: str, size: int, raw: Path, files) -> str:
    stamp = "|".join(f"{f}:{(raw / f).stat().st_size}:{(raw / f).stat().st_mtime_ns}" for f in files)
    return hashlib.sha256(f"{name}|{split}|{size}|{stamp}".encode()).hexdigest()[:16]


def load_split(name: str, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of one split as uint8 (N, 1, size, size) and labels int64 (N,), cached."""
    from safetensors.torch import load_file, save

    root = data_dir()
    cls_name, folder, files = SOURCES[name]
    raw = root / folder / "raw"
    if not raw_files_present(name, root):
        raise _missing(name, root)
    key = _cache_key(name, split, size, raw, [f for f in files if f.startswith("train" if split == "train" else "t10k")])
    cache = root / "cache" / f"{name}-{split}-{size}-{key}.safetensors"
    if cache.is_file():
        try:
            t = load_file(cache)
            return t["x"], t["y"]
        except Exception:  # a damaged cache is rebuilt
            pass
    import torchvision.datasets as tvd

    try:
        ds = getattr(tvd, cls_name)(str(root), train=split == "train", download=False)
        x, y = ds.data, ds.targets
    except Exception as exc:
        raise DataError(
            f"{name} in {raw} could not be read ({type(exc).__name__}: {exc}); "
            f"import the original files again with `ddpmctl data fetch {name} --from DIR`."
        ) from None
    x = x[:, None].contiguous()  # (N, 1, 28, 28) uint8
    if size != 28:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    y = y.long()
    atomic_write_bytes(cache, save({"x": x, "y": y}, metadata={"name": name, "split": split, "size": str(size)}))
    return x, y


def _filter(x, y, digits, name, split):
    if digits is None:
        return x, y
    keep = torch.isin(y, torch.tensor(digits))
    if not bool(keep.any()):
        raise DataError(f"no {name} {split} images have the classes {digits}; choose other --digits.")
    return x[keep], y[keep]


def mnist_like(name: str, label: str, size: int, digits, split: str) -> Dataset:
    chosen = parse_classes(digits)
    x, y = _filter(*load_split(name, split, size), chosen, name, split)
    other = "test" if split == "train" else "train"
    held: dict = {}

    def fresh(n: int, seed: int):
        if "x" not in held:
            held["x"], held["y"] = _filter(*load_split(name, other, size), chosen, name, other)
        return draw(held["x"], held["y"], n, seed)

    return Dataset(
        name=label, x=to_float(x), y=y, num_classes=10, kind="images", fresh_fn=fresh,
        info={"split": split, "digits": chosen, "size": size, "source": str(data_dir() / SOURCES[name][1] / "raw")},
    )


@with_options(MNISTOptions)
def MNIST(size: int = 28, digits=None, split: str = "train") -> Dataset:
    """MNIST handwritten digits (LeCun et al. 1998), 1 x size x size in [-1, 1], ten classes."""
    return mnist_like("mnist", "mnist", size, digits, split)


@with_options(MNIST16Options)
def MNIST16(digits=None, split: str = "train") -> Dataset:
    """MNIST resized to 16x16 (the data of phases 2 and 3), ten classes."""
    return mnist_like("mnist", "mnist16", 16, digits, split)


@with_options(MNISTOptions)
def FashionMNIST(size: int = 28, digits=None, split: str = "train") -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 gray clothes in ten classes (`digits` picks classes 0-9)."""
    return mnist_like("fashion-mnist", "fashion-mnist", size, digits, split)
