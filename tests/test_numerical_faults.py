"""Numerical faults injected through the command line, and provenance checks on load.

A fake third-party distribution `nanplug` registers a network that is the built-in MLP except
that its forward pass returns NaN at chosen training calls: the fault reaches the loop exactly
as a diverging model's would.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_clean_error, assert_ok, cli, on_pythonpath

NAN_MODULE = '''
import torch
from pydantic import Field
from ddpmctl.networks.mlp import MLP, MLPOptions

class NanOptions(MLPOptions):
    nan_at: list[int] = Field(default_factory=list, description="training forward calls (1-based) that return NaN")

class NanMLP(MLP):
    """The MLP, returning NaN on the chosen training calls (a fault-injection plugin)."""
    Options = NanOptions

    def __init__(self, nan_at=(), **kw):
        super().__init__(**kw)
        self.nan_at, self.calls = set(nan_at), 0

    def forward(self, x_t, t, y=None):
        out = super().forward(x_t, t, y)
        if self.training:
            self.calls += 1
            if self.calls in self.nan_at:
                return out * float("nan")
        return out
'''

SMALL = ["--data", "8gaussians", "--steps", "40", "--checkpoint-every", "10", "--batch-size", "64",
         "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=50", "-o", "data.n=512"]
ENV = {"OMP_NUM_THREADS": "1", "DDPMCTL_LOG_EVERY": "5"}


def make_dist(root, version: str):
    (root / "nanplug.py").write_text(NAN_MODULE)
    for old in root.glob("nanplug-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = root / f"nanplug-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: nanplug\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[ddpmctl.networks]\nnan-mlp = nanplug:NanMLP\n")


@pytest.fixture
def nanplug(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    make_dist(root, "1.0.0")
    return root


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(nanplug, tmp_path):
    env = {**ENV, **on_pythonpath(nanplug)}
    runs = tmp_path / "runs"
    r = cli("train", *SMALL, "--network", "nan-mlp", "-o", "network.nan_at=[23]", "--name", "r", "--runs-dir", runs, env=env)
    msg = assert_clean_error(r, "learning rate", "checkpoint")
    # The CPU checks every step; CUDA checks at each log line (no host sync per step) and names the span.
    span = re.search(r"between steps (\d+) and (\d+)", msg)
    assert "step 23" in msg or (span and int(span[1]) <= 23 <= int(span[2])), msg
    run = runs / "r"
    assert (run / "latest").read_text().strip().endswith("00000020.safetensors")
    tensors = load_file(run / "checkpoints" / (run / "latest").read_text().strip())
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    # It resumes from step 20, here with bad steps to be skipped from now on, and finishes.
    resumed = cli("train", "--resume", run, "--on-nonfinite", "skip", env=env)
    assert_ok(resumed)
    assert "(step 20)" in resumed.stdout and "done" in resumed.stdout


def test_skip_drops_only_the_bad_steps_and_leaves_the_weights_finite(nanplug, tmp_path):
    env = {**ENV, **on_pythonpath(nanplug)}
    runs = tmp_path / "runs"
    r = cli("train", *SMALL, "--network", "nan-mlp", "-o", "network.nan_at=[7,8,31]", "--on-nonfinite", "skip",
            "--name", "r", "--runs-dir", runs, env=env)
    assert_ok(r)
    records = [json.loads(line) for line in (runs / "r" / "metrics.jsonl").read_text().splitlines()]
    skipped = [rec["step"] for rec in records if rec.get("event") == "skipped"]
    assert skipped == [7, 8, 31]
    losses = [rec["loss"] for rec in records if "loss" in rec]
    assert losses and all(map(lambda v: v == v, losses))  # no NaN reached the logged mean
    final = load_file(runs / "r" / "checkpoints" / (runs / "r" / "latest").read_text().strip())
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_too_many_bad_steps_in_a_row_stop_even_when_skipping(nanplug, tmp_path):
    env = {**ENV, **on_pythonpath(nanplug)}
    bad = json.dumps(list(range(5, 40)))
    r = cli("train", *SMALL, "--network", "nan-mlp", "-o", f"network.nan_at={bad}", "--on-nonfinite", "skip",
            "--name", "r", "--runs-dir", tmp_path / "runs", env=env)
    assert_clean_error(r, "in a row")


def test_loading_a_checkpoint_says_which_plugin_versions_changed(nanplug, tmp_path):
    env = {**ENV, **on_pythonpath(nanplug)}
    runs = tmp_path / "runs"
    assert_ok(cli("train", *SMALL, "--network", "nan-mlp", "--steps", "10", "--name", "r", "--runs-dir", runs, env=env))
    same = cli("sample", runs / "r", "--n", "16", "--steps", "5", env=env)
    assert_ok(same)
    assert "other software" not in same.stdout
    make_dist(nanplug, "2.0.0")  # the plugin was upgraded since the run was trained
    changed = cli("sample", runs / "r", "--n", "16", "--steps", "5", env=env)
    assert_ok(changed)
    assert "network 'nan-mlp' came from nanplug 1.0.0, now from nanplug 2.0.0" in changed.stdout.replace("\n", " ")
