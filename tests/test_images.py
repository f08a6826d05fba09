"""Image phases end to end: MNIST fetched from its original files, image folders (gray, RGB,
with classes), training a few steps through the CLI, sampling with classes and guidance, and
each user error as one sentence with a non-zero exit."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmctl import registry
from ddpmctl.errors import DataError
from tests.conftest import MNIST_FILES, assert_clean_error, assert_ok, cli_here, need_mnist, write_images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EMOJI = SHARED / "emoji32"

def _env(data_dir, **extra) -> dict:
    """The data directory, plus one thread: tiny tensors, where a second OpenMP thread only spins."""
    return {"DDPMCTL_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", **extra}


# A few steps of a very small U-Net on 8x8 images and a short schedule.
TINY_IMG = ["--steps", "4", "--batch-size", "8", "-o", "network.channels=8", "-o", "network.channel_mult=[1,2]",
            "-o", "schedule.T=20", "--checkpoint-every", "4"]


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Path:
    """An unconditional RGB run on a generated folder of 8x8 PNGs, with grids every 2 steps."""
    tmp = tmp_path_factory.mktemp("rgb")
    write_images(tmp / "imgs", 24)
    r = cli_here("train", "--data", "imagefolder", "-o", f"data.root={tmp / 'imgs'}", "-o", "data.size=8",
            "--name", "rgb", "--runs-dir", tmp / "runs", *TINY_IMG, env=_env(tmp / "data", DDPMCTL_SAMPLE_EVERY="2"))
    assert_ok(r)
    return tmp / "runs" / "rgb"


# -- MNIST -------------------------------------------------------------------------------------
def test_mnist16_digits_filter_fresh_split_and_cache(mnist_dir, monkeypatch):
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(mnist_dir))
    registry.clear_cache()
    ds = registry.build("dataset", "mnist16", {"digits": "0"})
    assert ds.kind == "images" and ds.shape == (1, 16, 16) and ds.x.dtype == torch.float32
    assert len(ds) == 5923 and set(ds.y.tolist()) == {0} and ds.num_classes == 10  # the zeros of the training split
    assert ds.x.min() >= -1 and ds.x.max() <= 1 and ds.x.min() == -1
    x, y = ds.fresh(50, seed=1)  # from the test split, same digits
    assert x.shape == (50, 1, 16, 16) and set(y.tolist()) == {0}
    assert not any(torch.equal(x[0], row) for row in ds.x[:2000])
    assert list((mnist_dir / "cache").glob("mnist-train-16-*.safetensors"))

    several = registry.build("dataset", "mnist16", {"digits": "0,1,7"})
    assert set(several.y.tolist()) == {0, 1, 7}
    full = registry.build("dataset", "mnist", {"digits": [3], "split": "test"})
    assert full.shape == (1, 28, 28) and len(full) == 1010 and set(full.y.tolist()) == {3}


def test_data_show_writes_a_png_grid(mnist_dir, tmp_path):
    out = tmp_path / "zeros.png"
    r = cli_here("data", "show", "mnist16", "--digits", "0", "--out", out, env=_env(mnist_dir))
    assert_ok(r)
    assert "5923 examples" in r.stdout and Image.open(out).size[0] >= 8 * 16


def test_fetch_checks_md5_and_imports_nothing_on_a_corrupted_file(tmp_path):
    need_mnist()
    src = tmp_path / "src"
    src.mkdir()
    for f in MNIST_FILES.glob("*.gz"):
        shutil.copy(f, src / f.name)
    labels = bytearray(gzip.decompress((src / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] ^= 1  # one flipped bit in one label
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    (src / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))  # uncompressed files are accepted too
    data = tmp_path / "data"
    r = cli_here("data", "fetch", "mnist", "--from", src, env=_env(data))
    assert_clean_error(r, "t10k-labels-idx1-ubyte", "MD5", "27ae3e4e09519cfbb04c329615203637")
    assert not (data / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()  # nothing half-imported


def test_missing_mnist_says_both_ways_to_get_it(tmp_path):
    r = cli_here("train", "--data", "mnist16", "--digits", "0", "--runs-dir", tmp_path / "runs", env=_env(tmp_path / "empty"))
    assert_clean_error(r, "ddpmctl data fetch mnist`", "ddpmctl data fetch mnist --from DIR")
    assert not (tmp_path / "runs").exists()


def test_digit_outside_0_to_9_is_one_sentence(tmp_path):
    r = cli_here("train", "--data", "mnist16", "--digits", "0,12", "--runs-dir", tmp_path, env=_env(tmp_path))
    assert_clean_error(r, "digit 12 is outside 0-9")


def test_other_datasets_missing_are_data_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(tmp_path))
    registry.clear_cache()
    for name, fragment in (("fashion-mnist", "fetch fashion-mnist --from DIR"), ("cifar10", "fetch cifar10"), ("emoji32", "fetch emoji32 --from DIR")):
        with pytest.raises(DataError, match=fragment):
            registry.build("dataset", name, {})


# -- image folders -----------------------------------------------------------------------------
def test_image_folder_gray_crop_classes_and_held_out(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(tmp_path / "data"))
    write_images(tmp_path / "f" / "cats", 6, size=12, seed=1)
    write_images(tmp_path / "f" / "dogs", 4, size=10, seed=2)
    ds = registry.build("dataset", "imagefolder", {"root": str(tmp_path / "f"), "size": 8, "mode": "gray", "fit": "crop", "held_out": 0.2})
    assert ds.shape == (1, 8, 8) and len(ds) == 8 and ds.num_classes == 2 and ds.info["classes"] == ["cats", "dogs"]
    x, y = ds.fresh(2, 0)
    assert x.shape == (2, 1, 8, 8) and y is not None
    assert not any(torch.equal(x[0], row) for row in ds.x)  # held out: never trained on
    flat = registry.build("dataset", "imagefolder", {"root": str(tmp_path / "f" / "cats"), "size": 8})
    assert flat.shape == (3, 8, 8) and flat.y is None and flat.num_classes == 0


def test_empty_image_folder_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    r = cli_here("train", "--data", "imagefolder", "-o", f"data.root={tmp_path / 'empty'}", "--runs-dir", tmp_path, env=_env(tmp_path))
    assert_clean_error(r, "has no images")


def test_unreadable_image_folder_is_one_sentence(tmp_path, monkeypatch):
    write_images(tmp_path / "bad", 3)
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = cli_here("data", "show", "imagefolder", "-o", f"root={tmp_path / 'bad'}", "--out", tmp_path / "x.png", env=_env(tmp_path))
    assert_clean_error(r, "broken.png", "cannot be read")
    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        registry.build("dataset", "imagefolder", {"root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="is not a folder"):
        registry.build("dataset", "imagefolder", {"root": str(tmp_path / "bad" / "img000.png")})


# -- training and sampling on RGB ---------------------------------------------------------------
def test_rgb_folder_trains_with_grids_and_samples_uint8(rgb_run, tmp_path):
    record = json.loads((rgb_run / "config.json").read_text())
    assert record["data"]["shape"] == [3, 8, 8] and record["config"]["network"] == "unet"
    assert sorted(p.name for p in (rgb_run / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]

    out, grid = tmp_path / "s", tmp_path / "grid.png"
    assert_ok(cli_here("sample", rgb_run, "--n", "10", "--steps", "5", "--grid", grid, "--trajectory", "--out", out, env=_env(tmp_path)))
    with np.load(out / "ddpm-5steps-seed0.npz") as f:
        assert f["samples"].shape == (10, 3, 8, 8) and f["samples"].dtype == np.uint8 and "labels" not in f
        assert json.loads(str(f["record"]))["nfe"] == 5
    assert Image.open(grid).size[0] > 8 * 3
    assert Image.open(out / "ddpm-5steps-seed0-trajectory.png").size[0] >= 8 * 8


def test_class_on_an_unconditional_model_is_one_sentence(rgb_run, tmp_path):
    r = cli_here("sample", rgb_run, "--n", "4", "--steps", "2", "--class", "1", "--out", tmp_path, env=_env(tmp_path))
    assert_clean_error(r, "--class needs a class-conditional model")


def test_class_conditional_folder_samples_requested_classes_with_guidance(tmp_path):
    write_images(tmp_path / "imgs" / "a", 12, seed=3)
    write_images(tmp_path / "imgs" / "b", 12, seed=4)
    env = _env(tmp_path / "data")
    assert_ok(cli_here("train", "--data", "imagefolder", "-o", f"data.root={tmp_path / 'imgs'}", "-o", "data.size=8", "--cond", "class",
                  "-o", "network.cross_attention=true", "--name", "c", "--runs-dir", tmp_path / "runs", *TINY_IMG, env=env))
    run = tmp_path / "runs" / "c"
    assert (run / "grids" / "step-00000004.png").is_file()  # image runs: a grid at the end by default
    out = tmp_path / "s"
    assert_ok(cli_here("sample", run, "--n", "6", "--steps", "3", "--class", "1", "--guidance", "2", "--out", out, env=env))
    with np.load(out / "ddpm-3steps-seed0-class1-w2.npz") as f:
        assert f["labels"].tolist() == [1] * 6 and f["samples"].shape == (6, 3, 8, 8)
    r = cli_here("sample", run, "--n", "2", "--steps", "2", "--class", "2", "--out", out, env=env)
    assert_clean_error(r, "--class 2 is not a class of this model", "0 to 1")


def test_emoji32_trains_a_few_steps(tmp_path):
    if not EMOJI.is_dir():
        pytest.skip(f"the emoji32 images are not at {EMOJI} (shared/data/emoji32 beside the repository)")
    r = cli_here("train", "--data", "imagefolder", "-o", f"data.root={EMOJI}", "--steps", "2", "--batch-size", "4",
            "-o", "network.channels=8", "-o", "network.channel_mult=[1,2]", "-o", "schedule.T=20", "--name", "e",
            "--runs-dir", tmp_path / "runs", env=_env(tmp_path / "data", DDPMCTL_SAMPLE_EVERY="0"))
    assert_ok(r)
    record = json.loads((tmp_path / "runs" / "e" / "config.json").read_text())
    assert record["data"] == {"shape": [3, 32, 32], "num_classes": 0, "kind": "images", "size": 1401, "absmax": 1.0}
    assert not (tmp_path / "runs" / "e" / "grids").exists()  # sample_every = 0: no grids
    assert list((tmp_path / "data" / "cache").glob("imagefolder-*.safetensors"))


def test_failed_download_says_how_to_import_instead(tmp_path, monkeypatch):
    """No network (or a dead mirror): one sentence naming --from, whatever torchvision raised."""
    import torchvision.datasets as tvd

    from ddpmctl.datasets.fetch import fetch

    monkeypatch.setenv("DDPMCTL_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once, online or not
    with pytest.raises(DataError, match=r"could not download mnist .*ddpmctl data fetch mnist --from DIR") as err:
        fetch("mnist16")
    assert "\n" not in str(err.value)
