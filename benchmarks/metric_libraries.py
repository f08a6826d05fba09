"""The project's metric arithmetic against torch-fidelity's and prdc's, timed on the same features
(docs/metrics.md, "Against torch-fidelity and prdc"; their agreement is tests/test_metrics_parity.py).

    pip install -e ".[dev]"          # torch-fidelity and prdc
    python benchmarks/metric_libraries.py [--threads 2]

Features: 2000 x 2048 random non-negative vectors per side (pool3-like, seeded), so that the
timing does not wait on Inception. Each computation runs once, after the imports.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import prdc as prdc_lib
import torch
from torch_fidelity import metric_fid, metric_kid, metric_prc

from ddpmctl.devices import set_threads
from ddpmctl.metrics.fid import Stats, frechet_distance
from ddpmctl.metrics.kid import kid_from_features
from ddpmctl.metrics.prdc import prdc_from_features


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ours_fid(a: np.ndarray, b: np.ndarray) -> float:
    g, r = Stats.of(a), Stats.of(b)
    return frechet_distance(g.mu, g.sigma, r.mu, r.sigma, g.a)


def their_fid(a: np.ndarray, b: np.ndarray) -> dict:
    stats = [metric_fid.fid_features_to_statistics(torch.from_numpy(f)) for f in (a, b)]
    return metric_fid.fid_statistics_to_metric(*stats, verbose=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    set_threads(p.parse_args().threads)
    rng = np.random.default_rng(0)
    a, b = np.abs(rng.standard_normal((2000, 2048))), 1.1 * np.abs(rng.standard_normal((2000, 2048)))
    a1, b1 = a[:1000], b[:1000]
    kid_kw = dict(kid_subsets=100, kid_subset_size=1000, kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=0, verbose=False)
    rows = [
        ("FID from features, n = 1000", lambda: ours_fid(a1, b1), "torch-fidelity", lambda: their_fid(a1, b1)),
        ("KID, 100 subsets of 1000 from 2000", lambda: kid_from_features(a, b, subsets=100, subset_size=1000), "torch-fidelity",
         lambda: metric_kid.kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), **kid_kw)),
        ("PRDC, n = 1000, k = 5", lambda: prdc_from_features(a1, b1, k=5), "prdc",
         lambda: prdc_lib.compute_prdc(real_features=a1, fake_features=b1, nearest_k=5)),
        ("precision and recall, n = 1000, k = 5", lambda: prdc_from_features(a1, b1, k=5), "torch-fidelity",
         lambda: metric_prc.prc_features_to_metric(torch.from_numpy(b1), torch.from_numpy(a1), prc_neighborhood=5, prc_batch_size=10000,
                                                   save_cpu_ram=False, verbose=False)),
    ]
    print("| computation | ddpmctl s | library | library s | library / ddpmctl |\n|---|---|---|---|---|")
    for what, ours, lib, theirs in rows:
        t_ours, t_lib = timed(ours), timed(theirs)
        print(f"| {what} | {t_ours:.2f} | {lib} | {t_lib:.2f} | {t_lib / t_ours:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
