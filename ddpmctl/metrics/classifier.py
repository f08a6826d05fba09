"""The project's own digit classifier, and the metrics it gives: classifier FID, class coverage, class accuracy.

A small CNN trained on first use on the 28x28 training split of MNIST (or Fashion-MNIST) read
from ``data_dir()`` (a minute or two on two CPU cores), then cached as safetensors under
``data_dir()/classifiers/`` with a key hashing the training recipe and the training data. Images
of other sizes (16x16, 32x32) are resized to 28x28; training passes every other batch through
16x16 and back so that the classifier reads the blur of upsampled 16x16 digits too.

- ``classify(images) -> (probs, features)``: softmax (N, 10) and penultimate features (N, 128).
- ``classifier-fid``: the Frechet distance on the penultimate features (fast on CPU).
- ``class-coverage``: the class histogram of samples, its normalised entropy, KL to uniform and
  to the data's class frequencies, and mode collapse (a class under a quarter of its share).
- ``class-accuracy``: for class-conditional samples, how often the classifier reads the requested class.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ddpmctl import config
from ddpmctl.checkpoint import atomic_write_bytes, content_hash
from ddpmctl.datasets import mnist
from ddpmctl.datasets.base import Dataset, to_float
from ddpmctl.errors import DataError
from ddpmctl.metrics import fid as fidlib
from ddpmctl.metrics.base import MetricResult
from ddpmctl.metrics.inception import Progress, batched, pick_device, quantize
from ddpmctl.registry import PluginOptions, with_options

FORMAT = "ddpmctl-classifier/1"
NUM_CLASSES = 10
SIZE = 28


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights besides the data; part of the cache key."""

    arch: str = "digitcnn-v1"
    epochs: float = 3.0
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    shift: int = 2  # augmentation: random shift of each batch by up to this many pixels
    blur_every: int = 4  # augmentation: every k-th batch resized to 16x16 (antialiased) and back (bilinear)


RECIPE = Recipe()


class DigitCNN(nn.Module):
    """(B, C, 28, 28) in [-1, 1] -> logits (10 for digits); ``features`` is the 128-d penultimate layer (after ReLU)."""

    feature_dim = 128

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 1):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(in_channels, 16), *block(16, 32), *block(32, 64), nn.Flatten())  # (B, 64*3*3)
        self.fc = nn.Sequential(nn.Linear(64 * 3 * 3, self.feature_dim), nn.ReLU())
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 10)


# ---------------------------------------------------------------------------------------------
# Data


def load_split(which: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, 1, 28, 28) float32 in [-1, 1], y (N,) int64) of one split, through the dataset's cache."""
    if which not in mnist.SOURCES:
        raise DataError(f"unknown classifier {which!r}; known: {', '.join(mnist.SOURCES)}.")
    u8, y = mnist.load_split(which, "train" if train else "test", 28)
    return to_float(u8), y


def _data_sha256(which: str) -> str:
    """The training split's pixels and labels: a classifier cached for other data is not reused."""
    return _train_split_sha256(which, config.data_dir())


@functools.lru_cache(maxsize=4)
def _train_split_sha256(which: str, root: Path) -> str:  # once per process and data directory, not per metric
    u8, y = mnist.load_split(which, "train", 28)
    h = hashlib.sha256(u8.numpy().tobytes())
    h.update(y.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Training and the cache


def to_classifier_input(images: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] -> (B, 1, 28, 28) in [-1, 1]: 8-bit rounding, then bilinear resize to 28x28."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise DataError(f"the digit classifier reads 1-channel images (N, 1, H, W), got {tuple(images.shape)}; classifier metrics are for MNIST-like data.")
    return resize_28(images, quantized)


def resize_28(images: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, C, 28, 28): 8-bit rounding (optional), then bilinear resize."""
    x = quantize(images) * 2 - 1 if quantized else images.float().clamp(-1, 1)
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=x.shape[-1] > SIZE)
    return x


def _augment(x: torch.Tensor, step: int, recipe: Recipe, g: torch.Generator) -> torch.Tensor:
    s = recipe.shift
    if s:
        pad = F.pad(x, (s, s, s, s), value=-1.0)
        dx, dy = torch.randint(0, 2 * s + 1, (2,), generator=g).tolist()
        x = pad[:, :, dy : dy + SIZE, dx : dx + SIZE]  # random shift up to s px
    if recipe.blur_every and step % recipe.blur_every == 0:  # the blur of 16x16 data upsampled to 28x28
        x = F.interpolate(F.interpolate(x, size=16, mode="bilinear", antialias=True), size=SIZE, mode="bilinear")
    return x


def _accuracy(net: DigitCNN, x: torch.Tensor, y: torch.Tensor, device: torch.device, size: int = SIZE) -> float:
    if size != SIZE:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
    probs = batched(lambda b: net(to_classifier_input(b, quantized=False)), x, 1000, device, "accuracy")
    return float((torch.from_numpy(probs).argmax(1) == y).double().mean())


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int, recipe: Recipe, device: torch.device,
        progress: Progress = None, what: str = "training a classifier") -> DigitCNN:
    """Train a DigitCNN from scratch on images ``x`` (N, C, 28, 28) in [-1, 1] with labels ``y`` in
    0..num_classes-1: ``steps`` random batches, AdamW with a one-cycle learning rate, each batch
    shifted (and blurred) as ``recipe`` says; weights and batches seeded by ``recipe.seed``.
    Returned in eval mode, without gradients."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = DigitCNN(num_classes, x.shape[1]).to(device)
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (recipe.batch_size,), generator=g)
        xb = _augment(x[idx], step, recipe, g).to(device)
        loss = F.cross_entropy(net(xb), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step % 20 == 0 or step == steps - 1):
            progress(what, step + 1, steps)
    return net.eval().requires_grad_(False)


def train(which: str = "mnist", recipe: Recipe | None = None, device: str = "auto", progress: Progress = None) -> tuple[DigitCNN, dict]:
    """Train the classifier from scratch on the 28x28 training split; returns it with its record."""
    recipe = recipe or RECIPE
    x, y = load_split(which, train=True)
    xt, yt = load_split(which, train=False)
    dev = pick_device(device)
    steps = max(1, round(recipe.epochs * len(x) / recipe.batch_size))
    t0 = time.perf_counter()
    net = fit(x, y, NUM_CLASSES, steps, recipe, dev, progress, f"training the {which} classifier (once; cached)")
    train_s = time.perf_counter() - t0
    record = {
        "classifier": which,
        "recipe": asdict(recipe),
        "train_data_sha256": _data_sha256(which),
        "train_time_s": round(train_s, 1),
        "train_device": str(dev),
        "test_accuracy": _accuracy(net, xt, yt, dev),
        "test_accuracy_16x16": _accuracy(net, xt, yt, dev, size=16),
        "torch": torch.__version__,
    }
    return net.cpu(), record


def classifier_path(which: str = "mnist", recipe: Recipe | None = None) -> Path:
    recipe = recipe or RECIPE
    key = hashlib.sha256(json.dumps({"recipe": asdict(recipe), "data": _data_sha256(which)}, sort_keys=True).encode()).hexdigest()[:16]
    return config.data_dir() / "classifiers" / f"{which}-{recipe.arch}-{key}.safetensors"


@dataclass
class Classifier:
    net: DigitCNN
    which: str
    path: Path
    meta: dict

    def record(self) -> dict:
        return {
            "classifier": f"ddpmctl {self.meta['recipe']['arch']} trained on {self.which} (28x28 train split)",
            "classifier_file": self.path.name,
            "classifier_sha256": self.meta["content_sha256"],
            "classifier_test_accuracy": self.meta["test_accuracy"],
        }


def _read(path: Path) -> Optional[tuple[dict[str, torch.Tensor], dict]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(raw["meta"])
    except Exception:  # damaged or foreign file: retrain over it
        return None
    if raw.get("format") != FORMAT or content_hash(tensors) != raw.get("content_sha256"):
        return None
    meta["content_sha256"] = raw["content_sha256"]
    return tensors, meta


_loaded: dict[tuple[Path, str], Classifier] = {}  # (file, device) -> classifier, for this process


def load_classifier(which: str = "mnist", device: str = "auto", progress: Progress = None, recipe: Recipe | None = None) -> Classifier:
    """The cached classifier, trained first if there is none (``progress`` reports the training).
    ``recipe`` defaults to the module's ``RECIPE`` at call time. A damaged file is retrained."""
    recipe = recipe or RECIPE
    path = classifier_path(which, recipe)
    dev = str(pick_device(device))
    if (path, dev) in _loaded:
        return _loaded[(path, dev)]
    got = _read(path) if path.is_file() else None
    if got is None:
        from safetensors.torch import save as st_save

        net, meta = train(which, recipe, dev, progress)
        tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
        meta["content_sha256"] = content_hash(tensors)
        atomic_write_bytes(path, st_save(tensors, metadata={"format": FORMAT, "content_sha256": meta["content_sha256"], "meta": json.dumps(meta)}))
    else:
        tensors, meta = got
        net = DigitCNN()
        net.load_state_dict(tensors)
        net.eval().requires_grad_(False)
    _loaded[(path, dev)] = Classifier(net.to(dev), which, path, meta)
    return _loaded[(path, dev)]


def classify(images: torch.Tensor, which: str = "mnist", batch_size: int = 500, device: str = "auto", quantized: bool = True, progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, 10) and penultimate features (N, 128), float64, of images (N, 1, H, W) in [-1, 1]."""
    clf = load_classifier(which, device, progress)
    dev = pick_device(device)

    def fn(x):
        f = clf.net.features(to_classifier_input(x, quantized))
        return torch.cat([clf.net.head(f).softmax(dim=1), f], dim=1)

    out = batched(fn, images, batch_size, dev, f"{which} classifier", progress)
    return out[:, :NUM_CLASSES], out[:, NUM_CLASSES:]


def test_accuracy(which: str = "mnist", size: int = SIZE, device: str = "auto", progress: Progress = None) -> float:
    """The cached classifier's accuracy on the test split, recomputed; ``size=16`` reads it through 16x16 images."""
    clf = load_classifier(which, device, progress)
    x, y = load_split(which, train=False)
    return _accuracy(clf.net, x, y, pick_device(device), size)


# ---------------------------------------------------------------------------------------------
# Metrics


def pick_classifier(name: str, dataset: Dataset) -> str:
    if name != "auto":
        return name
    if len(dataset.shape) != 3 or dataset.shape[0] != 1:
        raise DataError(f"the classifier metrics read 1-channel digit images, but {dataset.name} images are {tuple(dataset.shape)}; use fid for RGB data.")
    return "fashion-mnist" if "fashion" in dataset.name.lower() else "mnist"


def digit_labels(dataset: Dataset, y: torch.Tensor) -> torch.Tensor:
    """Dataset labels as the classifier's 10 classes: as they are, or through ``dataset.info['digits']``
    when a digit subset numbers its classes 0..k-1."""
    y = torch.as_tensor(y).long()
    digits = dataset.info.get("digits") if isinstance(dataset.info, dict) else None
    if dataset.num_classes not in (0, NUM_CLASSES) and digits is not None and len(digits) == dataset.num_classes:
        y = torch.as_tensor([int(d) for d in digits])[y]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise DataError(f"labels must lie in 0..{NUM_CLASSES - 1} (got {int(y.min())}..{int(y.max())}); pass the requested class of each sample.")
    return y


class ClassifierOptions(PluginOptions):
    classifier: Literal["auto", "mnist", "fashion-mnist"] = Field("auto", description="which digit classifier (auto: fashion-mnist for Fashion-MNIST data, else mnist)")
    ref_seed: int = Field(0, ge=0, description="seed of the reference subset and of the held-out floor set")
    quantize: bool = Field(True, description="round images to 8 bits first, as saved image files are")
    batch_size: int = Field(500, ge=1, le=65536, description="images per forward pass")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


class ClassifierFIDOptions(ClassifierOptions):
    n_ref: Optional[int] = Field(None, ge=2, description="training images in the reference statistics (default: as many as samples)")
    ref: Optional[Path] = Field(None, description="reuse reference statistics: an .npz of mu and sigma (128-d)")
    cache: bool = Field(True, description="read and write real-image statistics under data_dir/fid-stats")


def classifier_features(which: str, batch_size: int, device: str, quantized: bool, progress: Progress = None) -> fidlib.Features:
    clf = load_classifier(which, device, progress)

    def fn(images, progress, what):
        return classify(images, which, batch_size, device, quantized, progress)[1]

    record = {
        **clf.record(),
        "feature_network": f"ddpmctl {which} classifier, penultimate layer (128-d)",
        "preprocessing": {"quantize": "to 8 bits" if quantized else "none (float)", "resize": "bilinear to 28x28 (antialiased when shrinking)"},
    }
    return fidlib.Features(f"{which}-classifier", record, fn)


@with_options(ClassifierFIDOptions)
def classifier_fid(samples, dataset, classifier="auto", ref_seed=0, quantize=True, batch_size=500, device="auto", n_ref=None, ref=None, cache=True, progress: Progress = None) -> MetricResult:
    """Frechet distance on the penultimate features of the project's digit classifier (fast on CPU)."""
    samples = fidlib.as_images(samples, dataset)
    feats = classifier_features(pick_classifier(classifier, dataset), batch_size, device, quantize, progress)
    return fidlib.compare("classifier-fid", "classifier-fid", feats, samples, dataset, n_ref, ref_seed, ref, progress, cache)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    nz = p > 0
    return float(np.sum(p[nz] * (np.log(p[nz]) - np.log(q[nz]))))


def coverage(pred: np.ndarray, share: np.ndarray, collapse_share: float) -> tuple[dict[str, float], list[int]]:
    """Figures of the class histogram of predictions ``pred``: its entropy / log 10, KL to uniform
    and to the data's class shares ``share`` (one pseudo-count per class in the data keeps it finite),
    and the classes (with share s > 0) that get less than ``collapse_share`` s of the predictions."""
    counts = np.bincount(pred, minlength=NUM_CLASSES).astype(np.float64)
    p = counts / counts.sum()
    uniform = np.full(NUM_CLASSES, 1.0 / NUM_CLASSES)
    smoothed = (share * 1e4 + 1) / (1e4 + NUM_CLASSES)  # as if from 10,000 labels, plus one per class
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    collapsed = [k for k in range(NUM_CLASSES) if share[k] > 0 and p[k] < collapse_share * share[k]]
    values = {
        "entropy/log(10)": float(entropy / math.log(NUM_CLASSES)),
        "kl(samples||uniform)": _kl(p, uniform),
        "kl(samples||data classes)": _kl(p, smoothed),
        "collapsed classes": float(len(collapsed)),
        **{f"share[{k}]": float(p[k]) for k in range(NUM_CLASSES)},
    }
    return values, collapsed


class CoverageOptions(ClassifierOptions):
    collapse_share: float = Field(0.25, gt=0, le=1, description="a class is collapsed when it gets less than this fraction of its share in the data")


@with_options(CoverageOptions)
def class_coverage(samples, dataset, classifier="auto", ref_seed=0, quantize=True, batch_size=500, device="auto", collapse_share=0.25, progress: Progress = None) -> MetricResult:
    """Class histogram of samples (by the digit classifier): entropy, KL to uniform and to the data, mode collapse."""
    samples = fidlib.as_images(samples, dataset)
    which = pick_classifier(classifier, dataset)
    clf = load_classifier(which, device, progress)
    held, _ = fidlib.held_out(dataset, len(samples), ref_seed)
    if dataset.y is not None:
        data_counts = np.bincount(digit_labels(dataset, dataset.y).numpy(), minlength=NUM_CLASSES).astype(np.float64)
        data_freq = "training labels"
    else:
        data_counts, data_freq = np.ones(NUM_CLASSES), "uniform (the dataset has no labels)"
    share = data_counts / data_counts.sum()
    probs, _ = classify(samples, which, batch_size, device, quantize, progress)
    probs_held, _ = classify(held, which, batch_size, device, quantize, progress)
    values, collapsed = coverage(probs.argmax(1), share, collapse_share)
    floor, _ = coverage(probs_held.argmax(1), share, collapse_share)
    warnings = [f"mode collapse: class {k} has {values[f'share[{k}]']:.3f} of the samples where the data has {share[k]:.3f}" for k in collapsed]
    return MetricResult(
        metric="class-coverage",
        values=values,
        floor=floor,
        protocol={
            "n": len(samples),
            "n_floor": len(held),
            "floor_set": {"split": "held-out (dataset.fresh)", "seed": ref_seed},
            **clf.record(),
            "class_of_sample": "argmax of the classifier's softmax",
            "data_class_shares": [round(float(s), 4) for s in share],
            "data_class_source": data_freq,
            "kl_smoothing": "data shares as if from 10,000 labels plus one pseudo-count per class",
            "collapse_rule": f"a class with share in the data s > 0 is collapsed when its share of the samples is below {collapse_share} s",
            "collapsed_classes": collapsed,
            "warnings": warnings,
        },
    )


@with_options(ClassifierOptions)
def class_accuracy(samples, dataset, labels=None, classifier="auto", ref_seed=0, quantize=True, batch_size=500, device="auto", progress: Progress = None) -> MetricResult:
    """For class-conditional samples: how often the digit classifier reads the requested class, per class."""
    if labels is None:
        raise DataError("class-accuracy needs the class each sample was asked for (labels); evaluate samples of a class-conditional model.")
    samples = fidlib.as_images(samples, dataset)
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(samples):
        raise DataError(f"class-accuracy got {len(labels)} labels for {len(samples)} samples; pass one requested class per sample.")
    which = pick_classifier(classifier, dataset)
    clf = load_classifier(which, device, progress)
    want = digit_labels(dataset, labels).numpy()
    held, held_y = fidlib.held_out(dataset, len(samples), ref_seed)
    if held_y is None:
        raise DataError(f"dataset {dataset.name} has no labels for its held-out images, so class-accuracy has no floor; use a labelled dataset.")
    held_y = digit_labels(dataset, held_y).numpy()
    got = classify(samples, which, batch_size, device, quantize, progress)[0].argmax(1)
    got_held = classify(held, which, batch_size, device, quantize, progress)[0].argmax(1)

    def per_class(pred, true):
        out = {"accuracy": float(np.mean(pred == true))}
        for k in sorted(set(want.tolist())):
            m = true == k
            out[f"accuracy[{k}]"] = float(np.mean(pred[m] == k)) if m.any() else float("nan")
        return out

    values, floor = per_class(got, want), per_class(got_held, held_y)
    return MetricResult(
        metric="class-accuracy",
        values=values,
        floor=floor,
        protocol={
            "n": len(samples),
            "n_floor": len(held),
            "requested_per_class": {int(k): int(c) for k, c in zip(*np.unique(want, return_counts=True))},
            "floor_set": {"split": "held-out (dataset.fresh) with their true labels", "seed": ref_seed},
            **clf.record(),
            "warnings": [],
        },
    )
