"""PRDC: improved precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020).

Four figures from k-nearest-neighbour balls in a feature space, for real features R_1..R_N (the
reference: training images) and fake features F_1..F_M (the samples). r_i is the distance of R_i
to its k-th nearest neighbour among the other real features, f_j that of F_j among the other fakes,
and B(x, r) the ball of radius r around x:

- precision = 1/M sum_j 1[F_j in some B(R_i, r_i)]: the share of samples that look real (fidelity);
- recall    = 1/N sum_i 1[R_i in some B(F_j, f_j)]: the share of real images the samples reach (diversity);
- density   = 1/(k M) sum_j sum_i 1[F_j in B(R_i, r_i)]: how many real balls hold each sample, over k;
  about 1 when the samples are distributed as the data, above 1 where they crowd the modes;
- coverage  = 1/N sum_i 1[some F_j in B(R_i, r_i)]: the share of real balls with a sample in them,
  a recall that fake outliers cannot inflate (it uses the real radii only).

The definitions follow the papers (Kynkaanniemi et al. 2019, eqs. 1-2; Naeem et al. 2020, Sec. 3)
and their reference implementation, the ``prdc`` package of Naeem et al. (clovaai/generative-
evaluation-prdc), which is not a dependency: written here with torch.cdist in float64, on chunks
of ``CHUNK`` rows so that n = 10,000 needs about 100 MB. As in that package the balls are open
(distance < radius; the papers write <=, which differs only on ties), so a set compared with
itself scores precision = recall = coverage = 1 and density = 1 exactly.

The features, the reference and the floor set are KID's (``kid.choose_features``,
``kid.feature_sets``): the floor is the four figures with ``n`` held-out real images in place of
the samples.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from pydantic import Field

from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import DataError
from ddpmctl.metrics import fid as fidlib
from ddpmctl.metrics import kid as kidlib
from ddpmctl.metrics.base import MetricResult
from ddpmctl.metrics.inception import Progress, pick_device
from ddpmctl.registry import with_options

CHUNK = 1024  # rows of a distance matrix held at once: 1024 x 10,000 float64 is 80 MB


def kth_neighbour_distances(x: torch.Tensor, k: int, chunk: int = CHUNK, progress: Progress = None) -> torch.Tensor:
    """The distance of each row of x (N, D) to its k-th nearest other row, (N,): NND_k of the papers
    (a row's distance to itself left out; a duplicate row counts as a neighbour at distance 0)."""
    if not 1 <= k < len(x):
        raise DataError(f"k={k} nearest neighbours need more than {k} feature vectors per set, got {len(x)}; evaluate more samples or lower k.")
    out = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)  # |x_i - x_j|, (chunk, N)
        rows = torch.arange(len(d), device=d.device)
        d[rows, rows + start] = float("inf")  # not itself
        out.append(d.kthvalue(k, dim=1).values)
        if progress is not None:
            progress("k-NN radii", min(start + chunk, len(x)), len(x))
    return torch.cat(out)


def prdc_from_features(real, fake, k: int = 5, device: str | torch.device = "cpu", real_radii: Optional[torch.Tensor] = None,
                       chunk: int = CHUNK, progress: Progress = None) -> dict[str, float]:
    """Precision, recall, density and coverage of fake features (M, D) against real features (N, D),
    in float64 (module docstring). ``real_radii``: the real k-NN radii when already computed (the
    value and the floor share them)."""
    r, f = kidlib.as_features(real, fake)
    dev = torch.device(device)
    r, f = r.to(dev), f.to(dev)
    r_radius = kth_neighbour_distances(r, k, chunk) if real_radii is None else real_radii.to(dev, torch.float64)  # r_i, (N,)
    f_radius = kth_neighbour_distances(f, k, chunk)  # f_j, (M,)
    in_real_balls = torch.zeros(len(f), dtype=torch.bool, device=dev)  # F_j in some B(R_i, r_i)
    balls_holding = torch.zeros(len(f), dtype=torch.float64, device=dev)  # number of B(R_i, r_i) holding F_j
    recalled, covered = [], []
    for start in range(0, len(r), chunk):
        d = torch.cdist(r[start : start + chunk], f)  # |R_i - F_j|, (chunk, M)
        inside = d < r_radius[start : start + chunk, None]  # F_j in B(R_i, r_i)
        in_real_balls |= inside.any(dim=0)
        balls_holding += inside.sum(dim=0)
        recalled.append((d < f_radius[None, :]).any(dim=1))  # R_i in some B(F_j, f_j)
        covered.append(inside.any(dim=1))  # some F_j in B(R_i, r_i)
        if progress is not None:
            progress("PRDC distances", min(start + chunk, len(r)), len(r))
    return {
        "precision": float(in_real_balls.double().mean()),  # Kynkaanniemi et al. 2019, eq. 2
        "recall": float(torch.cat(recalled).double().mean()),  # Kynkaanniemi et al. 2019, eq. 2
        "density": float(balls_holding.sum() / (k * len(f))),  # Naeem et al. 2020
        "coverage": float(torch.cat(covered).double().mean()),  # Naeem et al. 2020
    }


class PRDCOptions(kidlib.FeatureSetOptions):
    k: int = Field(5, ge=1, le=1000, description="nearest neighbours that set each ball's radius (Naeem et al.: 5)")


@with_options(PRDCOptions)
def prdc(samples: torch.Tensor, dataset: Dataset, features="auto", n_ref=None, ref_seed=0, weights="auto", quantize=True, batch_size=None, device="auto",
         cache=True, k=5, progress: Progress = None) -> MetricResult:
    """Improved precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) from k-NN balls in feature space."""
    samples = fidlib.as_images(samples, dataset)
    feats = kidlib.choose_features(features, dataset, weights, batch_size, device, quantize, progress)
    sets = kidlib.feature_sets(samples, dataset, feats, n_ref, ref_seed, progress, cache)
    dev = pick_device(device)
    t0 = time.perf_counter()
    radii = kth_neighbour_distances(torch.as_tensor(sets.reference.x, dtype=torch.float64, device=dev), k, progress=progress)  # r_i, shared
    values = prdc_from_features(sets.reference.x, sets.samples, k, dev, radii, progress=progress)
    floor = prdc_from_features(sets.reference.x, sets.held.x, k, dev, radii, progress=progress)
    n = len(sets.samples)
    warnings = []
    if sets.reference.n != n:
        warnings.append(f"{sets.reference.n} reference images against {n} samples: the k-NN radii of each set shrink as it grows, so the four figures depend on both sizes; compare only at the same n and n_ref")
    return MetricResult(
        metric="prdc",
        values=values,
        floor=floor,
        protocol={
            **sets.protocol(dataset),
            "k": k,
            "balls": "open (distance < k-th nearest neighbour distance), Euclidean, float64, as the prdc package of Naeem et al.",
            "time_s": {**sets.time_s, "prdc": round(time.perf_counter() - t0, 3)},
            "warnings": warnings,
        },
    )
