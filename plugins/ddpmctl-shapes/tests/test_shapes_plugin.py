"""Tests of the ddpmctl-shapes plugin, through ddpmctl's registries and command line."""

import subprocess
import sys

import numpy as np
import torch

from ddpmctl import registry
from ddpmctl.testing import check_dataset_contract, check_network_contract


def ddpmctl(*args):
    r = subprocess.run([sys.executable, "-m", "ddpmctl", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_registered_under_its_own_distribution():
    assert registry.entry("dataset", "glyph").dist == "ddpmctl-shapes"
    assert registry.entry("network", "fourier-mlp").dist == "ddpmctl-shapes"


def test_dataset_contract_and_shape():
    check_dataset_contract("glyph", {"n": 2000})
    ds = registry.build("dataset", "glyph", {"n": 20_000, "text": "I"})
    # A capital I is a tall, thin stroke: much more spread vertically than horizontally.
    assert ds.x[:, 1].std() > 2 * ds.x[:, 0].std()
    wide = registry.build("dataset", "glyph", {"n": 20_000, "text": "MMMM"})
    assert wide.x[:, 0].std() > 2 * wide.x[:, 1].std()


def test_network_contract():
    check_network_contract("fourier-mlp", {"width": 32, "depth": 1, "features": 8})


def test_fourier_features_are_fixed_across_instances():
    a = registry.build("network", "fourier-mlp", {"features": 8}, data_shape=(2,), num_classes=0)
    b = registry.build("network", "fourier-mlp", {"features": 8}, data_shape=(2,), num_classes=0)
    assert torch.equal(a.B, b.B)


def test_train_and_sample_through_the_cli(tmp_path):
    runs = tmp_path / "runs"
    ddpmctl("train", "--data", "glyph", "--network", "fourier-mlp", "--name", "g", "--runs-dir", runs, "--steps", "100",
            "-o", "network.width=32", "-o", "network.depth=1", "-o", "schedule.T=100", "-o", "data.n=5000")
    ddpmctl("sample", runs / "g", "--n", "100", "--out", tmp_path / "s")
    with np.load(tmp_path / "s" / "ddpm-100steps-seed0.npz") as f:
        assert f["samples"].shape == (100, 2)
    ddpmctl("data", "show", "glyph", "-o", "text=HI", "--out", tmp_path / "hi.png")
    assert (tmp_path / "hi.png").stat().st_size > 1000
