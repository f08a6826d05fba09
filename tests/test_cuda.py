"""The CUDA path, where a GPU is present (skipped elsewhere: CI has none). benchmarks/gpu.sh runs
the whole suite on a lent GPU, where `device = auto` makes every other test a CUDA test too; these
are the checks that only mean something there."""

from __future__ import annotations

import pytest
import torch

import ddpmctl
from tests.conftest import TINY_SETTINGS, assert_ok, cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_a_cpu_run_resumes_on_the_gpu_and_says_its_random_stream_restarts(tmp_path):
    runs = tmp_path / "runs"
    ddpmctl.train(data="8gaussians", name="r", runs_dir=runs, device="cpu", threads=1, **{**TINY_SETTINGS, "steps": 100})
    r = cli("train", "--resume", runs / "r", "--steps", "200", "--device", "cuda")
    assert_ok(r)
    assert "another kind of device than cuda" in r.stdout + r.stderr
    resumed = ddpmctl.Run.load(runs / "r", device="cuda")
    assert resumed.step == 200 and all(torch.isfinite(p).all() for p in resumed.model.net.parameters())


def test_gpu_samples_are_deterministic_in_the_seed_and_near_the_cpu_ones_from_the_same_noise(tiny_run):
    gpu, cpu = ddpmctl.Run.load(tiny_run, device="cuda"), ddpmctl.Run.load(tiny_run, device="cpu")
    a = gpu.sample(n=256, sampler="ddim", steps=20, seed=5).x
    b = gpu.sample(n=256, sampler="ddim", steps=20, seed=5).x
    assert torch.equal(a, b)
    # Deterministic DDIM from the same x_T: the two devices differ by rounding only.
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    from ddpmctl.interpolation import decode

    on_gpu = decode(gpu.model.denoiser(), x_T.cuda(), 20).cpu()
    on_cpu = decode(cpu.model.denoiser(), x_T, 20)
    assert torch.allclose(on_gpu, on_cpu, atol=2e-2), (on_gpu - on_cpu).abs().max()  # TF32 matrix products on the GPU


def test_interpolation_between_seeds_runs_on_the_gpu(tiny_run, tmp_path):
    r = cli("interpolate", tiny_run, "--seeds", "3,4", "--frames", "5", "--steps", "10", "--n", "16", "--device", "cuda",
            "--out", tmp_path / "i.png")
    assert_ok(r)
    assert (tmp_path / "i.png").stat().st_size > 0
