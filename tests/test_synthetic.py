"""Synthetic datasets: labelled samples exported as an image folder that torchvision's ImageFolder
and our imagefolder dataset both read, and the classification accuracy score (CAS) on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpmctl import registry
from ddpmctl.datasets.base import Dataset
from ddpmctl.errors import DataError
from ddpmctl.metrics.cas import cas
from tests.conftest import assert_clean_error, assert_ok, cli_here, write_images
from tests.test_images import TINY_IMG, _env


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A class-conditional RGB model, a few steps on two generated classes of 8x8 PNGs."""
    tmp = tmp_path_factory.mktemp("cond")
    write_images(tmp / "imgs" / "cats", 12, seed=3)
    write_images(tmp / "imgs" / "dogs", 12, seed=4)
    assert_ok(cli_here("train", "--data", "imagefolder", "-o", f"data.root={tmp / 'imgs'}", "-o", "data.size=8", "--cond", "class",
                  "--name", "c", "--runs-dir", tmp / "runs", *TINY_IMG, env=_env(tmp / "data", DDPMCTL_SAMPLE_EVERY="0")))
    return tmp / "runs" / "c", tmp / "data"


def test_export_is_a_labelled_folder_for_torchvision_and_imagefolder(cond_run, tmp_path, monkeypatch):
    import torchvision

    run, data = cond_run
    folder, out = tmp_path / "synthetic", tmp_path / "s"
    assert_ok(cli_here("sample", run, "--per-class", "3", "--steps", "3", "--seed", "5", "--export", folder, "--out", out, env=_env(data)))
    with np.load(out / "ddpm-3steps-seed5-3perclass.npz") as f:
        pixels, labels = f["samples"], f["labels"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]

    tv = torchvision.datasets.ImageFolder(str(folder))
    assert tv.classes == ["0", "1"] and tv.targets == labels.tolist()
    for (img, target), want, idx in zip(tv, pixels, range(6)):
        assert np.array_equal(np.asarray(img).transpose(2, 0, 1), want), idx  # PNG is lossless: the same pixels

    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(tmp_path / "data"))
    ours = registry.build("dataset", "imagefolder", {"root": str(folder), "size": 8})
    assert ours.num_classes == 2 and ours.y.tolist() == labels.tolist()
    assert torch.equal(ours.x, torch.from_numpy(pixels).float() / 127.5 - 1)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["checkpoint_step"] == 4 and manifest["sampler"] == "ddpm" and manifest["steps"] == 3
    assert manifest["seed"] == 5 and manifest["guidance"] == 1.0 and manifest["per_class"] == 3
    assert manifest["run"].endswith("/c") and manifest["classes"] == {"0": 0, "1": 1}
    assert [e["label"] for e in manifest["files"]] == labels.tolist()

    # eval reads the folder back with the model's labels; cas prints both accuracies and the counts
    r = cli_here("eval", run, "--metric", "cas", "--samples", folder, "-o", "cas.steps=3", "-o", "cas.n_test=20", env=_env(data))
    assert_ok(r)
    assert "6 samples" in r.stdout and "real images instead" in r.stdout and "cas" in r.stdout
    saved = json.loads(next((run / "eval").glob("cas-*.json")).read_text())
    assert saved["protocol"]["n"] == 6 and saved["protocol"]["classes"] == [0, 1]


def test_bench_quality_scores_a_conditional_model_with_cas(cond_run):
    """bench hands each sample's class to the metrics that take labels (before, cas failed there)."""
    run, data = cond_run
    r = cli_here("bench", "quality", run, "--metric", "cas", "--sampler", "ddim", "--steps", "2,3", "--n", "8",
                 "-o", "cas.steps=3", "-o", "cas.n_test=20", env=_env(data))
    assert_ok(r)
    (saved,) = (run / "bench").glob("quality-cas-*.json")
    rows = json.loads(saved.read_text())["rows"]
    assert [(row["sampler"], row["steps"], row["error"]) for row in rows] == [("ddim", 2, ""), ("ddim", 3, "")]
    assert all(0 <= row["cas"] <= 1 for row in rows)


def test_export_errors_are_one_sentence(cond_run, tmp_path):
    run, data = cond_run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    assert_clean_error(cli_here("sample", run, "--per-class", "2", "--export", tmp_path / "full", env=_env(data)), "is not empty")
    assert_clean_error(cli_here("sample", run, "--per-class", "2", "--n", "4", env=_env(data)), "--n and --per-class")


# -- CAS ---------------------------------------------------------------------------------------
def squares(n: int, seed: int, size: int = 16, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Gray images of ``classes`` kinds: a bright square in one of four places (the class), jittered, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = -1 + 0.3 * torch.rand(n, 1, size, size, generator=g)
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        dy, dx = torch.randint(0, 3, (2,), generator=g).tolist()
        x[i, :, 1 + 8 * r + dy : 6 + 8 * r + dy, 1 + 8 * c + dx : 6 + 8 * c + dx] = 0.8
    return x, y


@pytest.fixture(scope="module")
def squares_data():
    x, y = squares(800, 0)
    return Dataset("squares", x, y, 4, "images", fresh_fn=lambda n, s: squares(n, 10_000 + s))


FAST = {"steps": 40, "batch_size": 32, "n_test": 200, "device": "cpu"}


def test_cas_of_real_images_nears_the_ceiling_and_of_shuffled_labels_is_at_most_chance(squares_data):
    x, y = squares_data.fresh(200, 99)  # real images the classifier is not tested on, with their true labels
    right = cas(x, squares_data, labels=y, **FAST)
    assert right.floor["cas"] > 0.8  # the ceiling: the same classifier trained on real images learns the task
    assert abs(right.values["cas"] - right.floor["cas"]) < 0.1
    assert right.protocol["n"] == 200 and right.protocol["chance"] == 0.25 and "200 samples" in right.protocol["summary"]

    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    wrong = cas(x, squares_data, labels=shuffled, **FAST)
    assert wrong.values["cas"] < 0.25 + 0.15 and wrong.floor["cas"] > 0.8


def test_cas_uses_only_the_sampled_classes_and_needs_labels(squares_data):
    x, y = squares_data.fresh(300, 7)
    keep = y >= 2
    r = cas(x[keep], squares_data, labels=y[keep], **FAST)
    assert r.protocol["classes"] == [2, 3] and r.protocol["chance"] == 0.5 and set(r.values) == {"cas", "cas[2]", "cas[3]"}
    assert sum(r.protocol["per_class"].values()) == int(keep.sum()) == r.protocol["n_real_train"]
    with pytest.raises(DataError, match="labels"):
        cas(x, squares_data, **FAST)
    with pytest.raises(DataError, match="at least two classes"):
        cas(x[y == 1], squares_data, labels=y[y == 1], **FAST)
    with pytest.raises(DataError, match="for images"):
        cas(torch.randn(10, 2), Dataset("pts", torch.randn(50, 2), torch.zeros(50, dtype=torch.long), 1, "points"), labels=torch.zeros(10))
