"""Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier trained only on a model's
labelled samples, tested on real images, beside the same classifier trained on real images.

    cas                = accuracy on real test images of a classifier trained on the samples (x, y)
    ceiling (floor)    = the same, the classifier trained on as many real training images per class

The classifier is the project's small CNN (``metrics.classifier.DigitCNN``, images resized to
28x28, any number of channels), trained from scratch by ``metrics.classifier.fit`` with a fixed
recipe and seed, ``steps`` batches each time. Only the classes present in the samples' labels take
part, in the real training subset and in the test set alike; chance is 1 / their number. The test
set is the dataset's held-out split (``dataset.fresh``).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import torch
from pydantic import Field

from ddpmctl.datasets.base import Dataset, to_uint8
from ddpmctl.errors import DataError
from ddpmctl.metrics import fid as fidlib
from ddpmctl.metrics.base import MetricResult
from ddpmctl.metrics.classifier import Recipe, fit, resize_28
from ddpmctl.metrics.inception import Progress, batched, pick_device
from ddpmctl.registry import PluginOptions, with_options


class CASOptions(PluginOptions):
    steps: int = Field(600, ge=1, le=100_000, description="training batches of each classifier (the same for samples and for real images)")
    batch_size: int = Field(128, ge=2, le=4096, description="images per training batch")
    n_test: int = Field(5000, ge=10, le=1_000_000, description="real held-out test images (dataset.fresh; all of them where the split has fewer), before keeping the samples' classes")
    ref_seed: int = Field(0, ge=0, description="seed of the real training subset (the ceiling) and of the test draw")
    seed: int = Field(0, ge=0, description="seed of the classifier's weights and batches")
    quantize: bool = Field(True, description="round images to 8 bits first, as saved image files are")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


def _per_class_subset(y: torch.Tensor, counts: dict[int, int], seed: int) -> tuple[torch.Tensor, list[int]]:
    """Indices of ``counts[k]`` examples of each class k in ``y`` (without replacement where there
    are enough), and the classes that had too few."""
    g = torch.Generator().manual_seed(seed)
    idx, short = [], []
    for k, c in counts.items():
        pool = torch.nonzero(y == k).flatten()
        if len(pool) == 0:
            raise DataError(f"the dataset has no training images of class {k}, so cas has no real ceiling for it; sample only classes the model was trained on.")
        if len(pool) >= c:
            idx.append(pool[torch.randperm(len(pool), generator=g)[:c]])
        else:
            short.append(k)
            idx.append(pool[torch.randint(0, len(pool), (c,), generator=g)])
    return torch.cat(idx), short


def _pixels(x: torch.Tensor) -> np.ndarray:
    return to_uint8(x).flatten(1).numpy()


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in _pixels(x)}


@with_options(CASOptions)
def cas(samples, dataset: Dataset, labels=None, steps=600, batch_size=128, n_test=5000, ref_seed=0, seed=0, quantize=True, device="auto", progress: Progress = None) -> MetricResult:
    """Classification Accuracy Score: a classifier trained on labelled samples, tested on real images, beside one trained on real images."""
    samples = fidlib.as_images(samples, dataset)
    if labels is None:
        raise DataError("cas needs the class of each sample (labels); evaluate samples of a class-conditional model, e.g. from `ddpmctl sample RUN --per-class K`.")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if len(labels) != len(samples):
        raise DataError(f"cas got {len(labels)} labels for {len(samples)} samples; pass one class per sample.")
    if dataset.y is None:
        raise DataError(f"dataset {dataset.name} has no labels, so cas has no real labelled images to test on; use a labelled dataset.")
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise DataError(f"cas needs samples of at least two classes (got only class {classes[0]}); sample more classes, e.g. --per-class K without --class.")
    counts = {k: int((labels == k).sum()) for k in classes}
    index = torch.full((max(max(classes), int(dataset.y.max())) + 1,), -1, dtype=torch.long)
    index[torch.tensor(classes)] = torch.arange(len(classes))  # class k -> 0..K-1

    # Real images: a training subset with the samples' class counts (the ceiling), and a held-out test set.
    real_idx, short = _per_class_subset(dataset.y, counts, ref_seed)
    x_test, y_test = fidlib.held_out(dataset, n_test, ref_seed, fewer_ok=True)
    if y_test is None:
        raise DataError(f"dataset {dataset.name} has no labels for its held-out images, so cas has no test set; use a labelled dataset.")
    keep = torch.isin(y_test, torch.tensor(classes))  # the samples' classes
    x_test, y_test = x_test[keep], y_test[keep]
    in_train = _rows(x_test) & _rows(dataset.x)
    if len(x_test) == 0:
        raise DataError(f"the held-out images of {dataset.name} have none of the classes {classes}; cas has nothing to test on.")

    dev = pick_device(device)
    recipe = Recipe(arch="digitcnn-v1", batch_size=batch_size, seed=seed, shift=2, blur_every=0)
    K = len(classes)

    def accuracy(x_train, y_train, what):
        net = fit(resize_28(x_train, quantize), index[y_train], K, steps, recipe, dev, progress, what)
        logits = batched(lambda b: net(resize_28(b, quantize)), x_test, 1000, dev, f"cas: testing ({what})", progress)
        pred = logits.argmax(1)
        truth = index[y_test].numpy()
        return {"cas": float(np.mean(pred == truth)), **{f"cas[{k}]": float(np.mean(pred[truth == i] == i)) if (truth == i).any() else math.nan for i, k in enumerate(classes)}}

    values = accuracy(samples, labels, "training on the samples")
    floor = accuracy(dataset.x[real_idx], dataset.y[real_idx], "training on real images")
    warnings = [f"the training split has fewer images of class(es) {short} than the samples; the ceiling repeats some of them"] if short else []
    if in_train:
        warnings.append(f"{len(in_train)} of the {len(x_test)} test images are also training images (the dataset holds none out?), so both accuracies are optimistic")
    per = f"{len(samples) // K} per class, " if len(set(counts.values())) == 1 else ""
    summary = (f"a classifier trained on {len(samples)} samples ({per}{K} classes) classifies {values['cas']:.1%} of {len(x_test)} real test images; "
               f"trained on {len(samples)} real images instead: {floor['cas']:.1%} (chance {1 / K:.1%})")
    return MetricResult(
        metric="cas",
        values=values,
        floor=floor,
        protocol={
            "n": len(samples), "n_real_train": len(real_idx), "n_test": len(x_test), "classes": classes,
            "per_class": counts, "chance": 1 / K,
            "floor_means": "the same classifier trained on as many real training images per class (the ceiling)",
            "test_set": {"split": "held-out (dataset.fresh), samples' classes only, each distinct image once", "seed": ref_seed, "also_in_training": len(in_train)},
            "classifier": "ddpmctl DigitCNN (3 conv blocks, 128-d features), images resized to 28x28, trained from scratch",
            "recipe": {**asdict(recipe), "steps": steps, "epochs": None, "optimizer": "AdamW, one-cycle learning rate"},
            "quantize": quantize, "summary": summary, "warnings": warnings,
        },
    )
