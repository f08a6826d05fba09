"""examples/: each phase's reproduce.sh runs end to end in a reduced size (fewer training steps, a
smaller network, a short schedule, fewer samples) and leaves the phase's figures and numbers:
the PNGs it promises, a trained run with the example's own settings, and the metric records."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, SHARED_DATA

EXAMPLES = REPO / "examples"
# Reduced sizes: the example's config is kept, only how long and how big changes.
SMALL_UNET = "--steps 2 --batch-size 4 --checkpoint-every 2 -o schedule.T=20 -o network.channels=8 -o network.channel_mult=[1,2]"
SMALL_MLP = "--steps 20 --checkpoint-every 20 -o schedule.T=20 -o network.width=16 -o network.depth=1 -o data.n=2000"


def reproduce(example: str, tmp: Path, train_args: str, n: int, steps: int | None, **env) -> subprocess.CompletedProcess:
    """Run examples/EXAMPLE/reproduce.sh from the repository root, as its README says, with the
    runs and figures under ``tmp`` and the console script of this interpreter's environment."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    full.update(COLUMNS="200", OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                RUNS=str(tmp / "runs"), FIGURES=str(tmp / "figures"), TRAIN_ARGS=train_args, N=str(n),
                DDPMCTL_SAMPLE_EVERY="0", **env)
    if steps:
        full["STEPS"] = str(steps)
    return subprocess.run(["bash", str(EXAMPLES / example / "reproduce.sh")], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=600)


def reproduced(example: str, run_name: str, figures: list[str], tmp: Path, train_args: str, n: int, steps: int | None,
               **env) -> Path:
    """Run the example's script, check that it succeeded, kept the example's settings and wrote
    the figures it promises; returns its run directory."""
    r = reproduce(example, tmp, train_args, n, steps, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp / "runs" / run_name
    assert_config_kept(example, run)
    assert_pngs(tmp / "figures", *figures)
    return run


def assert_pngs(folder: Path, *names: str) -> None:
    for name in names:
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and min(im.size) >= 16, name


def assert_config_kept(example: str, run: Path) -> None:
    """The example's own settings reached the run (only the size was reduced)."""
    text = (EXAMPLES / example / "config.toml").read_text()
    saved = json.loads((run / "config.json").read_text())["config"]
    for key in ("data", "cond", "schedule", "prediction", "lr", "ema_decay"):
        line = next((ln for ln in text.splitlines() if ln.startswith(f"{key} = ")), None)
        if line:
            want = line.split("=", 1)[1].strip().strip('"')
            assert str(saved[key]) == want or (key in ("lr", "ema_decay") and float(saved[key]) == float(want)), key


def record(run: Path, metric: str) -> dict:
    (path,) = (run / "eval").glob(f"{metric}-*.json")
    return json.loads(path.read_text())


def test_phase1_reproduces_its_figures_and_w2_beside_the_floor(tmp_path):
    run = reproduced("phase1-2d", "phase1-spiral", ["phase1-forward.png"], tmp_path, SMALL_MLP, n=300, steps=None)
    assert list((tmp_path / "figures" / "phase1").glob("*.png")) and list((tmp_path / "figures" / "phase1").glob("*.gif"))
    w2 = record(run, "wasserstein")
    value, floor = w2["values"]["w2"], w2["floor"]["w2"]
    assert math.isfinite(value) and 0 < floor < value  # 20 steps of a 16-wide MLP are far from the data
    assert record(run, "kl")["values"]


def test_mnist_phases_reproduce_their_figures_and_classifier_numbers(mnist_dir, tmp_path):
    """Phases 2 and 3 in one test: both need the MNIST classifier, trained once into the data
    directory the first time a classifier metric runs (about a minute), then read from its cache."""
    env = {"DDPMCTL_DATA_DIR": str(mnist_dir)}
    run = reproduced("phase2-mnist16-digit0", "phase2-mnist16-digit0", ["phase2-data.png", "phase2-samples.png"],
                     tmp_path, SMALL_UNET, n=200, steps=5, **env)
    coverage = record(run, "class-coverage")
    shares = [coverage["values"][f"share[{k}]"] for k in range(10)]
    assert sum(shares) == pytest.approx(1.0) and coverage["floor"]["share[0]"] > 0.97  # real zeros read as zeros
    cfid = record(run, "classifier-fid")
    assert cfid["values"]["classifier-fid"] > cfid["floor"]["classifier-fid"] > 0  # two steps of training: far from the data

    run = reproduced("phase3-mnist16-conditional", "phase3-mnist16-conditional", ["phase3-classes-w1.png", "phase3-classes-w2.png"],
                     tmp_path, SMALL_UNET, n=200, steps=5, **env)
    accuracy = record(run, "class-accuracy")
    assert accuracy["floor"]["accuracy"] > 0.95 and 0 <= accuracy["values"]["accuracy"] <= 1
    assert {f"accuracy[{k}]" for k in range(10)} <= accuracy["values"].keys()


def test_phase4_reproduces_its_figures_memorisation_and_fid_in_pixel_and_latent_space(tmp_path):
    if not (SHARED_DATA / "emoji32").is_dir():
        pytest.skip(f"the emoji32 images are not at {SHARED_DATA / 'emoji32'}")
    figures = ["phase4-data.png", "phase4-samples.png", "phase4-reconstructions.png", "phase4-latent-samples.png"]
    run = reproduced("phase4-rgb32", "phase4-emoji32", figures, tmp_path, SMALL_UNET, n=16, steps=5, DDPMCTL_DATA_DIR=str(tmp_path / "data"),
                     AE_ARGS="--steps 2 --batch-size 4 -o autoencoder.channels=8")
    latent = tmp_path / "runs" / "phase4-emoji32-latent"
    assert json.loads((latent / "config.json").read_text())["latent"]["shape"] == [4, 8, 8]
    for r in (run, latent):
        fid = record(r, "fid")
        assert fid["values"]["fid"] > fid["floor"]["fid"] > 0
        assert record(r, "memorisation")["values"]
    recon = json.loads((tmp_path / "runs" / "phase4-emoji32-ae" / "eval" / "reconstruction-fid-n16.json").read_text())
    assert recon["values"]["fid"] > recon["floor"]["fid"] > 0
