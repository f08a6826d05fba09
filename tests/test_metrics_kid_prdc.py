"""KID and PRDC: the estimators on synthetic feature arrays (properties and exact small cases), and
the two plugins' plumbing on tiny 8x8 images with a cheap stand-in for the feature network
(Inception never runs here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmctl import registry
from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import DataError
from ddpmctl.metrics import classifier as clf
from ddpmctl.metrics import fid as fidlib
from ddpmctl.metrics import inception
from ddpmctl.metrics import kid as kidlib
from ddpmctl.metrics.kid import kid_from_features
from ddpmctl.metrics.prdc import kth_neighbour_distances, prdc_from_features
from ddpmctl.testing import refusals


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(d))
    return d


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, term by term as written (Gretton et al. 2012, Lemma 6)."""
    d = x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


# ---------------------------------------------------------------------------------------------
# KID


def test_kid_matches_the_unbiased_mmd2_formula_exactly():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(6, 3)), g.normal(size=(6, 3)) + 0.3
    mean, std = kid_from_features(a, b, subsets=3, subset_size=100)  # every subset is the whole set
    assert abs(mean - direct_mmd2(a, b)) < 1e-10 and std == 0.0
    c = g.normal(size=(9, 3))  # sizes differ: the general formula
    k = kidlib.polynomial_kernel
    x, y = torch.as_tensor(a), torch.as_tensor(c)
    assert abs(kidlib.mmd2_unbiased(k(x, x), k(y, y), k(x, y)) - direct_mmd2(a, c)) < 1e-10


@pytest.mark.parametrize("gram_max", [kidlib.GRAM_MAX, 0])  # one kernel matrix, or one per subset
def test_kid_subsets_are_seeded_draws_without_replacement(monkeypatch, gram_max):
    monkeypatch.setattr(kidlib, "GRAM_MAX", gram_max)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(9, 3)) + 0.5
    g = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(5):  # the draws kid_from_features makes: a permutation of each set, its first m rows
        ia, ib = torch.randperm(6, generator=g)[:4], torch.randperm(9, generator=g)[:4]
        expected.append(direct_mmd2(a[ia.numpy()], b[ib.numpy()]))
    mean, std = kid_from_features(a, b, subsets=5, subset_size=4, seed=7)
    assert abs(mean - np.mean(expected)) < 1e-10 and abs(std - np.std(expected)) < 1e-10 and std > 0
    assert kid_from_features(a, b, subsets=5, subset_size=4, seed=7) == (mean, std)
    assert kid_from_features(a, b, subsets=5, subset_size=4, seed=8)[0] != mean


def test_kid_of_one_gaussian_is_near_zero_and_grows_with_a_mean_shift():
    g = np.random.default_rng(2)
    a, b = g.normal(size=(600, 16)), g.normal(size=(600, 16))
    same, same_std = kid_from_features(a, b, subsets=20, subset_size=200)
    small, _ = kid_from_features(a, b + 0.25, subsets=20, subset_size=200)
    large, _ = kid_from_features(a, b + 0.5, subsets=20, subset_size=200)
    assert 0 < same_std and abs(same) < 3 * same_std
    assert small > same + 5 * same_std and large > 2 * small  # MMD^2 grows as the shift squared


def test_kid_is_unbiased_where_the_plain_mmd2_is_not():
    g = np.random.default_rng(3)
    kid_values, plain = [], []
    k = kidlib.polynomial_kernel
    for _ in range(300):  # many pairs of tiny sets from one distribution
        a, b = g.normal(size=(20, 4)), g.normal(size=(20, 4))
        kid_values.append(kid_from_features(a, b, subsets=1, subset_size=20)[0])
        x, y = torch.as_tensor(a), torch.as_tensor(b)
        plain.append(float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()))  # the biased V-statistic
    v, p = np.asarray(kid_values), np.asarray(plain)
    assert abs(v.mean()) < 4 * v.std(ddof=1) / np.sqrt(len(v))  # within noise of 0
    assert (v < 0).any()  # an unbiased estimate of 0 is negative about half the time
    assert p.mean() > 10 * p.std(ddof=1) / np.sqrt(len(p))  # the test can see a bias (here about 1)


def test_kid_refuses_mismatched_or_too_few_features_in_one_sentence():
    refusals(lambda: kid_from_features(np.zeros((5, 3)), np.zeros((5, 4))),
             lambda: kid_from_features(np.zeros((1, 3)), np.zeros((5, 3))),
             lambda: kid_from_features(np.full((5, 3), np.nan), np.zeros((5, 3))), error=DataError)


# ---------------------------------------------------------------------------------------------
# PRDC


def clusters(g: np.random.Generator, per_cluster: int, which=range(10)) -> np.ndarray:
    """2-D points around 10 well-separated centres (20 apart, unit spread)."""
    centres = np.stack([20.0 * np.arange(10), np.zeros(10)], axis=1)
    return np.concatenate([centres[c] + g.normal(size=(per_cluster, 2)) for c in which])


def test_prdc_of_a_set_against_itself_is_one():
    x = np.random.default_rng(4).normal(size=(200, 8))
    got = prdc_from_features(x, x.copy(), k=5)
    assert got == pytest.approx({"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}, abs=1e-12)


def test_prdc_sees_mode_collapse_as_low_recall_and_coverage_with_high_precision():
    g = np.random.default_rng(5)
    real = clusters(g, 100)  # 10 modes, 1000 points
    collapsed = clusters(g, 1000, which=[0])  # 1000 samples of one mode
    got = prdc_from_features(real, collapsed, k=5)
    assert got["precision"] > 0.95
    assert 0.08 < got["recall"] <= 0.1 and 0.09 <= got["coverage"] <= 0.1  # a tenth of the modes
    good = prdc_from_features(real, clusters(g, 100), k=5)
    assert min(good.values()) > 0.9


def test_prdc_of_a_far_set_is_zero():
    g = np.random.default_rng(6)
    real = g.normal(size=(300, 4))
    got = prdc_from_features(real, g.normal(size=(300, 4)) + 100.0, k=5)
    assert got == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_k_sets_the_radii_as_hand_computed_in_1d():
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    fake = np.array([[-1.5], [10.0], [20.0], [30.0]])
    x = torch.as_tensor(real)
    # distances from 0, 1, 3, 7 to the others: {1, 3, 7}, {1, 2, 6}, {3, 2, 4}, {7, 6, 4}
    assert kth_neighbour_distances(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert kth_neighbour_distances(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    assert kth_neighbour_distances(x, 3).tolist() == [7.0, 6.0, 4.0, 7.0]
    # k = 1: only fake 10 lies in a real ball (|10 - 7| = 3 < 4); only real 7 has a fake in its ball.
    # The fakes' radii (11.5, 10, 10, 10) put every real within 11.5 of -1.5.
    assert prdc_from_features(real, fake, k=1) == {"precision": 0.25, "recall": 1.0, "density": 0.25, "coverage": 0.25}
    # k = 2: -1.5 enters the ball of 0 (1.5 < 3) and 10 that of 7 (3 < 6), one ball each: density 2 / (2 * 4)
    assert prdc_from_features(real, fake, k=2) == {"precision": 0.5, "recall": 1.0, "density": 0.25, "coverage": 0.5}
    small_chunks = prdc_from_features(real, fake, k=2, chunk=1)
    assert small_chunks == prdc_from_features(real, fake, k=2)


def test_prdc_refuses_k_at_least_the_set_size_in_one_sentence():
    x = np.zeros((5, 2))
    refusals(lambda: prdc_from_features(x, np.ones((3, 2)), k=5), lambda: prdc_from_features(x[:2], x, k=3),
             lambda: prdc_from_features(x, np.zeros((5, 3)), k=1), error=DataError)


# ---------------------------------------------------------------------------------------------
# The plugins, with a cheap feature network in place of Inception


def images(n: int, seed: int, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=g) * 2 - 1


def tiny_dataset(channels: int = 3, name: str = "tiny") -> Dataset:
    return Dataset(name=name, x=images(120, 0, channels), kind="images", fresh_fn=lambda m, s: (images(m, 10_000 + s, channels), None))


def projection(calls: list, name: str = "projection", dim: int = 192) -> fidlib.Features:
    """Flattened pixels times a fixed random matrix: a deterministic 16-d feature network."""
    w = torch.randn(dim, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def fn(x, progress, what):
        calls.append(len(x))
        return (x.reshape(len(x), -1).double() @ w).numpy()

    return fidlib.Features(name, {"feature_network": f"{name} (test)"}, fn)


@pytest.fixture
def cheap_inception(monkeypatch) -> list:
    """Replace the Inception network (what features=auto takes for RGB) by ``projection``; returns its calls."""
    calls: list = []
    monkeypatch.setattr(inception, "find_weights", lambda source="auto", head=False: None)
    monkeypatch.setattr(fidlib, "inception_features", lambda weights, batch_size, device, quantized: projection(calls))
    return calls


def test_kid_and_prdc_plugins_compare_samples_and_held_out_images_with_the_reference(cheap_inception, data_dir):
    ds = tiny_dataset()
    held = ds.fresh(40, 0)[0]  # the floor set: the held-out images for ref_seed 0
    kid, prdc = registry.load("metric", "kid"), registry.load("metric", "prdc")
    k = kid(held, ds, device="cpu")
    assert set(k.values) == set(k.floor) == {"kid", "kid_std"}
    assert k.values == k.floor  # samples that are the floor set score the floor: it is made of held-out images
    assert cheap_inception == [40, 40, 40]  # reference (training images), floor set, samples
    p = k.protocol
    assert (p["n"], p["n_ref"], p["n_floor"], p["features"], p["subset_size"], p["subset_size_asked"]) == (40, 40, 40, "projection", 40, 1000)
    assert not p["reference"]["from_cache"] and p["reference"]["features_file"].endswith(".features.npz")
    assert any("torch-fidelity" in w for w in p["warnings"]) and p["seed"] == 0 and p["subsets"] == 100

    other = images(40, 99) * 0.5  # samples unlike the data
    r = prdc(other, ds, device="cpu")
    assert set(r.values) == set(r.floor) == {"precision", "recall", "density", "coverage"}
    assert r.protocol["reference"]["from_cache"] and r.protocol["floor_set"]["from_cache"] and r.protocol["k"] == 5
    assert cheap_inception == [40, 40, 40, 40]  # the real features came from the cache
    assert prdc(held, ds, device="cpu").values == r.floor
    assert kid(held, ds, device="cpu").values == k.values  # features read back from the cache are the same numbers
    files = {Path(p["reference"]["features_file"]), Path(p["floor_set"]["features_file"])}
    assert set((data_dir / "fid-stats").glob("*.features.npz")) == files
    assert {f.name.split("-projection-")[0] for f in files} == {"tiny-train-n40", "tiny-held-out-n40"}


def test_real_features_are_read_back_exactly_and_a_damaged_file_is_recomputed():
    ds, calls = tiny_dataset(), []

    def pixels32(x, progress, what):  # float32 values, as a network's features are
        calls.append(len(x))
        return x.reshape(len(x), -1).float().double().numpy()

    single = fidlib.Features("single", {"feature_network": "float32 pixels"}, pixels32)
    for feats in (projection(calls), single):  # float64 features stored as float64, float32 ones as float32
        first = fidlib.real_features(feats, ds, "train", 30, 0)
        again = fidlib.real_features(feats, ds, "train", 30, 0)
        assert not first.cached and again.cached and np.array_equal(first.x, again.x) and again.x.dtype == np.float64
    assert calls == [30, 30]
    first.path.write_bytes(b"not a zip")
    fixed = fidlib.real_features(single, ds, "train", 30, 0)
    assert not fixed.cached and calls == [30, 30, 30] and np.array_equal(fixed.x, first.x)
    assert fidlib.real_features(single, ds, "train", 30, 1).path != first.path  # another subset, another file


def test_kid_reference_size_and_subsets_follow_the_options(cheap_inception):
    ds = tiny_dataset()
    k = registry.load("metric", "kid")(images(30, 5), ds, n_ref=60, subsets=4, subset_size=20, seed=3, device="cpu")
    p = k.protocol
    assert (p["n"], p["n_ref"], p["n_floor"], p["subsets"], p["subset_size"], p["seed"]) == (30, 60, 30, 4, 20, 3)
    assert k.values["kid_std"] > 0 and k.floor["kid_std"] > 0
    r = registry.load("metric", "prdc")(images(30, 5), ds, n_ref=60, k=3, device="cpu")
    assert r.protocol["k"] == 3 and r.protocol["n_ref"] == 60 and r.protocol["warnings"]


def test_auto_features_are_the_digit_classifier_for_one_channel_images(monkeypatch):
    calls: list = []
    monkeypatch.setattr(clf, "classifier_features", lambda which, batch_size, device, quantized, progress=None: projection(calls, f"{which}-classifier", 64))
    gray = tiny_dataset(channels=1, name="digits")
    k = registry.load("metric", "kid")(images(20, 3, channels=1), gray, device="cpu")
    assert k.protocol["features"] == "mnist-classifier" and calls == [20, 20, 20]
    with pytest.raises(DataError, match="features=inception"):
        registry.load("metric", "kid")(images(20, 3), tiny_dataset(), features="classifier", device="cpu")


def test_kid_and_prdc_refuse_points_and_bad_options_in_one_sentence(cheap_inception):
    points = Dataset(name="spiral", x=torch.randn(50, 2), kind="points")
    kid, prdc = registry.load("metric", "kid"), registry.load("metric", "prdc")
    messages = refusals(lambda: kid(torch.randn(5, 2), points), lambda: prdc(torch.randn(5, 2), points),
                        lambda: prdc(images(4, 1), tiny_dataset(), device="cpu"), error=DataError)  # 4 samples, k = 5
    assert "for images" in messages[0] and "for images" in messages[1] and "k=5" in messages[2]
    assert cheap_inception == [4, 4, 4]  # points never reach a feature network
    for name in ("kid", "prdc"):
        obj = registry.load("metric", name)
        assert obj.Options.model_fields and (obj.__doc__ or "").strip()
        refusals(lambda: registry.resolve("metric", name, {"features": "vgg"}))
