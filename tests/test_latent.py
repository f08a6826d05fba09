"""Latent diffusion (latent.py, autoencoding.py): a tiny autoencoder trained through the CLI, its
round trip and scale factor, a latent run that trains, resumes, samples and evaluates through
the CLI, and the one-sentence refusals of a bad autoencoder directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmctl
from ddpmctl.autoencoding import reconstruction_errors
from ddpmctl.latent import COPY_NAME, Autoencoder, latent_dataset
from tests.conftest import assert_clean_error, assert_ok, cli_here, write_images

# A tiny f2 autoencoder (8x8x3 -> 4x4x4) and a tiny U-Net on its latents.
TINY_AE = ["-o", "autoencoder.channels=16", "-o", "autoencoder.channel_mult=[1,2]", "--batch-size", "16", "--lr", "3e-3", "--loss", "l2", "--threads", "1"]
TINY_LATENT = ["--steps", "4", "--batch-size", "8", "-o", "network.channels=8", "-o", "network.channel_mult=[1,2]",
               "-o", "network.attn_resolutions=[]", "--checkpoint-every", "2", "--threads", "1"]
AE_STEPS = 600
PSNR_BAR = 20.0  # dB on held-out images (21.2 measured); an untrained autoencoder gives about 8


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A folder of 1024 images (a quarter held out), and an autoencoder trained on it."""
    tmp = tmp_path_factory.mktemp("latent")
    write_images(tmp / "imgs", 1024)
    env = {"DDPMCTL_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1"}
    data = ["--data", "imagefolder", "-o", f"data.root={tmp / 'imgs'}", "-o", "data.size=8", "-o", "data.held_out=0.25"]
    r = cli_here("autoencoder", "train", *data, *TINY_AE, "--steps", str(AE_STEPS), "--name", "ae", "--runs-dir", tmp / "runs",
                 env={**env, "DDPMCTL_AE_EMA_DECAY": "0.9"})  # a short run: the EMA of 0.999 would still lag
    assert_ok(r)
    return {"tmp": tmp, "env": env, "data": data, "ae": tmp / "runs" / "ae", "runs": tmp / "runs"}


def test_round_trip_beats_the_psnr_bar_and_the_record_says_so(world, monkeypatch):
    monkeypatch.setenv("DDPMCTL_DATA_DIR", world["env"]["DDPMCTL_DATA_DIR"])
    ae = ddpmctl.load_autoencoder(world["ae"], "cpu")
    ds = ddpmctl.load_dataset("imagefolder", root=str(world["tmp"] / "imgs"), size=8, held_out=0.25)
    held = ds.fresh(1000, 0)[0]  # every held-out image, as the run measures at each checkpoint (eval_n 1000)
    errors = reconstruction_errors(ae, held)
    assert errors["psnr"] >= PSNR_BAR, errors
    stop = json.loads((world["ae"] / "stop.json").read_text())
    # the same weights and images; loaded, the network is channels-last, so the sums round differently
    assert stop["step"] == AE_STEPS and stop["psnr"] == pytest.approx(errors["psnr"], abs=1e-3)
    untrained = Autoencoder(ae.record, ddpmctl.registry.build("autoencoder", "kl", ae.record.settings.autoencoder_options, data_shape=(3, 8, 8)).eval(),
                            1.0, "", "untrained")
    assert reconstruction_errors(untrained, held)["psnr"] < PSNR_BAR - 8
    assert (world["ae"] / "reconstructions.png").is_file() and Image.open(world["ae"] / "reconstructions.png").size[0] > 8 * 8


def test_latents_have_unit_variance_and_are_cached(world, monkeypatch):
    monkeypatch.setenv("DDPMCTL_DATA_DIR", world["env"]["DDPMCTL_DATA_DIR"])
    ae = ddpmctl.load_autoencoder(world["ae"], "cpu")
    ds = ddpmctl.load_dataset("imagefolder", root=str(world["tmp"] / "imgs"), size=8, held_out=0.25)
    z = latent_dataset(ae, ds)
    assert z.shape == ae.latent_shape == (4, 4, 4) and z.kind == "latents" and len(z) == len(ds)
    assert float(z.x.std()) == pytest.approx(1.0, abs=0.02)  # the scale factor: 1 / std of these latents
    assert torch.equal(z.x, ae.encode(ds.x))
    cached = list((world["tmp"] / "data" / "cache" / "latents").glob("imagefolder-*.safetensors"))
    assert len(cached) == 1
    assert torch.equal(latent_dataset(ae, ds).x, z.x)


def test_a_latent_run_trains_resumes_samples_and_evaluates_through_the_cli(world, tmp_path):
    env, runs = world["env"], world["runs"]
    r = cli_here("train", *world["data"], "--latent", world["ae"], *TINY_LATENT, "--name", "lat", "--runs-dir", runs, env={**env, "DDPMCTL_SAMPLE_EVERY": "2"})
    assert_ok(r)
    run = runs / "lat"
    record = json.loads((run / "config.json").read_text())
    assert record["latent"]["shape"] == [4, 4, 4] and record["data"]["shape"] == [3, 8, 8]
    assert (run / COPY_NAME).is_file() and (run / "grids" / "step-00000004.png").is_file()
    assert_ok(cli_here("train", "--resume", run, "--steps", "6", env=env))
    assert json.loads((run / "stop.json").read_text())["step"] == 6
    shutil.move(world["ae"], tmp_path / "ae-moved")  # a latent run samples without its autoencoder's directory
    try:
        r = cli_here("sample", run, "--n", "8", "--steps", "5", "--sampler", "ddim", "--out", tmp_path / "s", env=env)
        assert_ok(r)
        with np.load(tmp_path / "s" / "ddim-5steps-seed0.npz") as f:
            x = f["samples"]
        assert x.shape == (8, 3, 8, 8) and x.dtype == np.uint8
        r = cli_here("eval", run, "--metric", "memorisation", "--metric", "kid", "--metric", "prdc", "--n", "8", "--steps", "5", "--sampler", "ddim",
                     "-o", "kid.features=inception", "-o", "prdc.features=inception", "-o", "prdc.k=3", env=env)
        assert_ok(r)
        assert list((run / "eval").glob("memorisation-*.json"))
        for metric, keys in (("kid", {"kid", "kid_std"}), ("prdc", {"precision", "recall", "density", "coverage"})):  # decoded images, scored as images
            result = json.loads(next((run / "eval").glob(f"{metric}-*.json")).read_text())
            assert set(result["values"]) == set(result["floor"]) == keys and result["protocol"]["n"] == 8
    finally:
        shutil.move(tmp_path / "ae-moved", world["ae"])
    loaded = ddpmctl.Run.load(run, device="cpu")
    assert loaded.model.shape == (4, 4, 4) and loaded.model.default_clip() is None


def test_a_missing_autoencoder_directory_is_one_sentence(world, tmp_path):
    r = cli_here("train", *world["data"], "--latent", tmp_path / "nowhere", *TINY_LATENT, "--runs-dir", tmp_path, env=world["env"])
    assert_clean_error(r, "autoencoder directory", "does not exist")
    assert not list(tmp_path.iterdir())


def test_a_corrupt_autoencoder_is_one_sentence(world, tmp_path):
    bad = tmp_path / "ae"
    shutil.copytree(world["ae"], bad)
    for p in (bad / "checkpoints").glob("*.safetensors"):
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    r = cli_here("train", *world["data"], "--latent", bad, *TINY_LATENT, "--runs-dir", tmp_path / "runs", env=world["env"])
    assert_clean_error(r, "checkpoint", "corrupted")
    (bad / "config.json").write_text("{\"autoencoder\": 3}")
    assert_clean_error(cli_here("train", *world["data"], "--latent", bad, *TINY_LATENT, "--runs-dir", tmp_path / "runs", env=world["env"]),
                       "not a ddpmctl autoencoder record")
    assert not (tmp_path / "runs").exists()


def test_an_autoencoder_of_another_data_shape_or_a_diffusion_run_is_one_sentence(world, tmp_path):
    gray = [*world["data"], "-o", "data.mode=gray"]
    r = cli_here("train", *gray, "--latent", world["ae"], *TINY_LATENT, "--runs-dir", tmp_path / "runs", env=world["env"])
    assert_clean_error(r, "encodes 3x8x8 images", "1x8x8")
    other = world["runs"] / "lat"
    if other.is_dir():  # a diffusion run is not an autoencoder
        assert_clean_error(cli_here("train", *world["data"], "--latent", other, *TINY_LATENT, "--runs-dir", tmp_path / "runs", env=world["env"]),
                           "diffusion run, not an autoencoder")
    assert_clean_error(cli_here("sample", world["ae"], env=world["env"]), "autoencoder run, not a diffusion model")
    assert not (tmp_path / "runs").exists()


def test_a_latent_run_without_its_autoencoder_copy_is_one_sentence(world, tmp_path):
    r = cli_here("train", *world["data"], "--latent", world["ae"], *TINY_LATENT, "--steps", "2", "--name", "lat2", "--runs-dir", tmp_path, env=world["env"])
    assert_ok(r)
    (tmp_path / "lat2" / COPY_NAME).unlink()
    assert_clean_error(cli_here("sample", tmp_path / "lat2", "--n", "4", "--steps", "2", env=world["env"]), COPY_NAME, "is missing")


def test_autoencoder_settings_refuse_bad_values_and_a_resume_with_other_settings(world, tmp_path):
    assert_clean_error(cli_here("autoencoder", "train", "--data", "spiral", "--runs-dir", tmp_path, env=world["env"]), "encodes images", "points")
    assert_clean_error(cli_here("autoencoder", "train", *world["data"], "--kl-weight", "-1", "--runs-dir", tmp_path, env=world["env"]), "kl_weight")
    assert_clean_error(cli_here("autoencoder", "train", "--resume", world["ae"], "--lr", "0.1", env=world["env"]), "cannot resume", "lr")
    assert_clean_error(cli_here("autoencoder", "train", *world["data"], "--runs-dir", tmp_path, env={**world["env"], "DDPMCTL_AE_STEP": "3"}),
                       "DDPMCTL_AE_STEP")


def test_a_conditional_latent_run_guides_interpolates_and_benches_in_images(world, tmp_path):
    """The autoencoder encodes any 3x8x8 data: here two classes of it, for a class-conditional latent run."""
    for k, cls in enumerate(("a", "b")):
        write_images(tmp_path / "imgs" / cls, 48, seed=10 + k)  # 24 held out: memorisation's threshold needs 20
    env = world["env"]
    data = ["--data", "imagefolder", "-o", f"data.root={tmp_path / 'imgs'}", "-o", "data.size=8", "-o", "data.held_out=0.25"]
    assert_ok(cli_here("train", *data, "--cond", "class", "--latent", world["ae"], *TINY_LATENT, "--name", "cond", "--runs-dir", tmp_path, env=env))
    run = tmp_path / "cond"
    r = cli_here("sample", run, "--n", "4", "--class", "1", "--guidance", "2", "--steps", "3", "--sampler", "ddim", "--out", tmp_path / "s", env=env)
    assert_ok(r)
    with np.load(next((tmp_path / "s").glob("*.npz"))) as f:
        assert f["samples"].shape == (4, 3, 8, 8) and set(f["labels"].tolist()) == {1}
    assert_ok(cli_here("interpolate", run, "--seeds", "0,1", "--frames", "3", "--steps", "3", "--out", tmp_path / "seeds.png", env=env))
    assert Image.open(tmp_path / "seeds.png").size[0] >= 3 * 8
    r = cli_here("interpolate", run, "--images", "0,1", "--frames", "3", "--steps", "3", "--refine", "0", "--out", tmp_path / "images.png", env=env)
    assert_ok(r)
    assert "reconstruction of the two ends" in r.stdout
    r = cli_here("bench", "quality", run, "--sampler", "ddim", "--steps", "2,3", "--n", "8", "--metric", "memorisation", "--reference", "ddim:3", env=env)
    assert_ok(r)
    assert list((run / "bench").glob("*.json"))
