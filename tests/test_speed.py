"""`ddpmctl bench speed` and the speed settings: what they report and that they leave the model's
function alone. Nothing here times anything against a bar (speed is measured in benchmarks/)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from ddpmctl import registry, speed
from tests.conftest import TINY, assert_clean_error, assert_ok, cli, cli_here, on_pythonpath

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_bench_speed_reports_throughput_and_memory(tmp_path):
    out = tmp_path / "speed.json"
    r = cli_here("bench", "speed", "--model", "2d", "--nfe", "3", "--train-steps", "2", "--repeats", "2", "--batch-size", "32",
            "--out", out, env=ONE_THREAD)
    assert_ok(r)
    assert "2d (mlp, batch 32)" in r.stdout and "train img/s" in r.stdout
    record = json.loads(out.read_text())
    (result,) = record["results"]
    ours = result["sides"]["ddpmctl"]
    assert result["nfe"] == 3 and len(ours["train_images_per_s_runs"]) == 2 and "ratios" not in result
    assert ours["parameters"] == sum(p.numel() for p in registry.build("network", "mlp", {}, data_shape=(2,), num_classes=0).parameters())
    for key in ("train_images_per_s", "sample_images_per_s", "train_step_peak_mb", "sample_step_peak_mb"):
        assert ours[key] > 0
    assert record["environment"]["threads"] == 1


def test_bench_speed_against_diffusers_interleaves_and_prints_ratios(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "speed.json"
    r = cli_here("bench", "speed", "--model", "mnist16", "--vs", "diffusers", "--nfe", "2", "--train-steps", "1", "--repeats", "2",
            "--batch-size", "8", "--out", out, env=ONE_THREAD)
    assert_ok(r)
    assert "ddpmctl / diffusers" in r.stdout
    assert "profil" not in r.stderr.lower() and "USDT" not in r.stderr  # the memory profiler's chatter stays hidden
    (result,) = json.loads(out.read_text())["results"]
    ours, theirs = result["sides"]["ddpmctl"], result["sides"]["diffusers"]
    assert abs(theirs["parameters"] / ours["parameters"] - 1) <= 0.1
    for what in ("train", "sample"):  # the median of the per-repeat ratios: each pair ran back to back
        pairs = zip(ours[f"{what}_images_per_s_runs"], theirs[f"{what}_images_per_s_runs"])
        assert result["ratios"][what] == pytest.approx(statistics.median(a / b for a, b in pairs))


@pytest.mark.parametrize("model", [m for m, spec in speed.MODELS.items() if spec["kind"] == "images"])
def test_the_diffusers_unet_matches_ours_in_size(model):
    diffusers = pytest.importorskip("diffusers")
    shape = speed.MODELS[model]["shape"]
    ours = registry.build("network", "unet", {}, data_shape=shape, num_classes=0)
    theirs = diffusers.UNet2DModel(**speed.diffusers_unet_config(shape))
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    assert abs(n_theirs / n_ours - 1) <= 0.1
    x = torch.randn(2, *shape)
    assert theirs(x, torch.tensor([3, 500])).sample.shape == ours(x, torch.tensor([3, 500])).shape


def test_bench_speed_without_diffusers_is_one_sentence(tmp_path):
    fake = tmp_path / "site" / "diffusers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('diffusers is not installed')\n")
    r = cli("bench", "speed", "--model", "mnist16", "--vs", "diffusers", "--nfe", "1", "--repeats", "1",
            env={**ONE_THREAD, **on_pythonpath(tmp_path / "site")})
    assert_clean_error(r, "diffusers", "pip install")


def test_bench_speed_rejects_unknown_models_and_too_many_steps():
    assert_clean_error(cli_here("bench", "speed", "--model", "mnist17", env=ONE_THREAD), "mnist17", "mnist16")
    assert_clean_error(cli_here("bench", "speed", "--model", "2d", "--nfe", "5000", env=ONE_THREAD), "5000", "1000")


def test_channels_last_weights_compute_the_same_function():
    """The memory format the training loop and the sampler choose for image networks changes
    no output beyond float rounding."""
    torch.manual_seed(0)
    net = registry.build("network", "unet", {"channels": 8, "channel_mult": [1, 2]}, data_shape=(1, 8, 8), num_classes=0)
    with torch.no_grad():
        for p in net.parameters():  # wake the zero-initialised output layers
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        plain = net(x, t)
        fast = net.to(memory_format=torch.channels_last)(x, t)
    assert plain.abs().max() > 0 and torch.allclose(plain, fast, atol=1e-5, rtol=1e-4)


def test_train_with_bf16_autocast_runs_and_saves_float32_weights(tmp_path):
    args = [a if a != "300" else "30" for a in TINY]
    assert_ok(cli_here("train", "--data", "8gaussians", "--name", "bf16", "--runs-dir", tmp_path, *args, "--precision", "bf16",
                  "--threads", "1", env=ONE_THREAD))
    from ddpmctl.checkpoint import load

    tensors, meta = load(tmp_path / "bf16" / "checkpoints" / "step-00000030.safetensors")
    assert meta["config"]["precision"] == "bf16" and meta["config"]["threads"] == 1
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if k.startswith(("model/", "ema/")))
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model/"))


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bf16_for_image_networks_on_amx_cpus_only(monkeypatch, amx):
    from ddpmctl import devices

    monkeypatch.setattr(devices, "cpu_has_amx", lambda: amx)
    cpu = torch.device("cpu")
    assert devices.use_bf16("auto", cpu, images=True) is amx
    assert devices.use_bf16("auto", cpu, images=False) is False  # the 2-D MLPs keep float32
    assert devices.use_bf16("fp32", cpu, images=True) is False and devices.use_bf16("bf16", cpu, images=False) is True
    # CUDA: float32 with TF32 (measured faster at the default sizes on an H200); bf16 when asked
    assert devices.use_bf16("auto", torch.device("cuda"), images=True) is False and devices.use_bf16("bf16", torch.device("cuda")) is True
