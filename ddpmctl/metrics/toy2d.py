"""Metrics for 2-D samples: histogram KL, exact Wasserstein-2 and sliced Wasserstein (POT).

Each compares the samples with a fresh draw of real data of the same size (``ref_seed``)
and reports, beside it, the same figure between two independent real draws (the floor).
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from pydantic import Field

from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import DataError
from ddpmctl.metrics.base import MetricResult
from ddpmctl.registry import PluginOptions, with_options


class RefOptions(PluginOptions):
    ref_seed: int = Field(0, ge=0, description="seed of the real reference draw (the floor uses ref_seed + 1)")


def _references(dataset: Dataset, n: int, ref_seed: int) -> tuple[np.ndarray, np.ndarray]:
    ref, _ = dataset.fresh(n, ref_seed)
    other, _ = dataset.fresh(n, ref_seed + 1)
    return ref.double().numpy(), other.double().numpy()


def _points(samples: torch.Tensor) -> np.ndarray:
    x = samples.detach().double().cpu().reshape(samples.shape[0], -1).numpy()
    if x.shape[1] != 2:
        raise DataError(f"2-D metrics need points of shape (n, 2), got {tuple(samples.shape)}; for images use classifier-fid, fid or is.")
    return x


def w2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 between two empirical measures with uniform weights: sqrt(min_P <P, C>),
    C_ij = |a_i - b_j|^2, by network simplex (ot.emd2)."""
    cost = ot.dist(a, b, metric="sqeuclidean")
    w = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    return float(np.sqrt(ot.emd2(*w, cost, numItermax=10_000_000)))


@with_options(RefOptions)
def wasserstein(samples: torch.Tensor, dataset: Dataset, ref_seed: int = 0) -> MetricResult:
    """Exact Wasserstein-2 distance between samples and real data (POT's ot.emd2)."""
    x = _points(samples)
    ref, other = _references(dataset, len(x), ref_seed)
    return MetricResult(
        metric="wasserstein",
        values={"w2": w2(x, ref)},
        floor={"w2": w2(other, ref)},
        protocol={"n": len(x), "n_ref": len(ref), "cost": "squared euclidean", "solver": "ot.emd2 (exact)", "ref_seed": ref_seed},
    )


class SlicedOptions(RefOptions):
    projections: int = Field(500, ge=1, le=100_000, description="number of random directions")
    seed: int = Field(0, description="seed of the directions")


@with_options(SlicedOptions)
def sliced_wasserstein(samples, dataset, ref_seed=0, projections=500, seed=0) -> MetricResult:
    """Sliced Wasserstein-2 over random directions (POT's ot.sliced_wasserstein_distance)."""
    x = _points(samples)
    ref, other = _references(dataset, len(x), ref_seed)

    def sw(a, b):
        return float(ot.sliced_wasserstein_distance(a, b, n_projections=projections, p=2, seed=seed))

    return MetricResult(
        metric="sliced-wasserstein",
        values={"sw2": sw(x, ref)},
        floor={"sw2": sw(other, ref)},
        protocol={"n": len(x), "n_ref": len(ref), "projections": projections, "seed": seed, "ref_seed": ref_seed},
    )


class KLOptions(RefOptions):
    bins: int = Field(50, ge=2, le=1000, description="histogram bins per axis")
    range: float | None = Field(
        None, gt=0, description="histogram over [-range, range]^2; default: the reference's extent plus 10%"
    )
    alpha: float = Field(1.0, gt=0, description="additive (Laplace) smoothing: pseudo-count added to every bin")


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


@with_options(KLOptions)
def kl(samples, dataset, ref_seed=0, bins=50, range=None, alpha=1.0) -> MetricResult:
    """KL divergence between smoothed 2-D histograms of data and samples, both directions."""
    x = _points(samples)
    ref, other = _references(dataset, len(x), ref_seed)
    r = range if range is not None else float(np.abs(ref).max() * 1.1)
    edges = np.linspace(-r, r, bins + 1)

    def hist(a):
        h, _, _ = np.histogram2d(a[:, 0], a[:, 1], bins=[edges, edges])
        h = h + alpha  # Laplace smoothing keeps every bin positive (points outside the range are dropped)
        return h / h.sum()

    p, q, p2 = hist(ref), hist(x), hist(other)
    return MetricResult(
        metric="kl",
        values={"kl(data||samples)": _kl(p, q), "kl(samples||data)": _kl(q, p)},
        floor={"kl(data||samples)": _kl(p, p2), "kl(samples||data)": _kl(p2, p)},
        protocol={"n": len(x), "n_ref": len(ref), "bins": bins, "range": [-r, r], "smoothing": f"additive, {alpha} per bin", "ref_seed": ref_seed},
    )
