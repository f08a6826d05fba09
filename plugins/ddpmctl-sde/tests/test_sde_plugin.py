"""Tests of the ddpmctl-sde plugin, through ddpmctl's registries and command line."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpmctl import registry
from ddpmctl.denoiser import Denoiser
from ddpmctl.testing import check_sampler_contract, check_schedule_contract


def ddpmctl(*args):
    r = subprocess.run([sys.executable, "-m", "ddpmctl", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_registered_under_its_own_distribution():
    assert registry.entry("sampler", "euler-maruyama").dist == "ddpmctl-sde"
    assert registry.entry("schedule", "quadratic").dist == "ddpmctl-sde"


def test_sampler_passes_the_contract():
    check_sampler_contract("euler-maruyama")


def test_schedule_passes_the_contract():
    check_schedule_contract("quadratic")
    s = registry.build("schedule", "quadratic", {"T": 100})
    assert s.beta[0].item() == pytest.approx(1e-4) and s.beta[-1].item() == pytest.approx(0.02)
    # quadratic in t: second differences of sqrt(beta) vanish
    assert torch.allclose(s.beta.sqrt().diff().diff(), torch.zeros(98, dtype=torch.float64), atol=1e-12)


def test_gaussian_data_is_reproduced():
    """With the exact eps-predictor of N(m, s^2) data, the SDE sampler recovers N(m, s^2)."""
    sched = registry.build("schedule", "linear", {})
    m, sd = -0.4, 0.5

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x_t, t, y=None):
            a = sched.alpha_bar[t.round().long()].to(x_t)[:, None]  # t: the (float) timestep of a level
            return (1 - a).sqrt() * (x_t - a.sqrt() * m) / (a * sd**2 + 1 - a)

    fn = registry.load("sampler", "euler-maruyama")
    x_T = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0, nfe = fn(Denoiser(Oracle(), sched), x_T, 500, torch.Generator().manual_seed(1))
    assert nfe == 500
    assert x0.mean().item() == pytest.approx(m, abs=0.02) and x0.std().item() == pytest.approx(sd, rel=0.05)


def test_through_the_cli_on_a_core_model(tmp_path):
    runs = tmp_path / "runs"
    ddpmctl("train", "--data", "moons", "--schedule", "quadratic", "--name", "q", "--runs-dir", runs, "--steps", "100",
            "-o", "network.width=32", "-o", "network.depth=2", "-o", "schedule.T=100")
    ddpmctl("sample", runs / "q", "--sampler", "euler-maruyama", "--steps", "50", "--n", "200", "--out", tmp_path / "s")
    with np.load(tmp_path / "s" / "euler-maruyama-50steps-seed0.npz") as f:
        assert f["samples"].shape == (200, 2) and np.isfinite(f["samples"]).all()
    listing = ddpmctl("plugins", "list").stdout
    assert "euler-maruyama" in listing and "ddpmctl-sde" in listing
