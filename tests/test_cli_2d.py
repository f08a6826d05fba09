"""The 2-D phase end to end through the command line, and its error messages."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmctl.checkpoint import load
from tests.conftest import TINY, assert_clean_error, assert_ok, cli_here


def test_train_writes_a_complete_run_directory(tiny_run):
    record = json.loads((tiny_run / "config.json").read_text())
    assert record["config"]["data"] == "8gaussians" and record["data"]["shape"] == [2]
    assert record["plugins"]["network"] == {"name": "mlp", "dist": "ddpmctl", "version": record["versions"]["ddpmctl"]}
    steps = [json.loads(line)["step"] for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(50, 301, 50))
    assert (tiny_run / "latest").read_text().strip() == "step-00000300.safetensors"
    tensors, meta = load(tiny_run / "checkpoints" / "step-00000300.safetensors")
    assert meta["step"] == 300 and meta["config"]["steps"] == 300
    assert {k.split("/")[0] for k in tensors} == {"model", "ema", "optim", "rng"}
    assert Image.open(tiny_run / "loss.png").size[0] > 100


def test_sample_with_trajectory_and_eval(tiny_run, tmp_path):
    out = tmp_path / "s"
    assert_ok(cli_here("sample", tiny_run, "--n", "500", "--seed", "3", "--trajectory", "--out", out))
    with np.load(out / "ddpm-100steps-seed3.npz") as f:
        x = f["samples"]
        rec = json.loads(str(f["record"]))
    assert x.shape == (500, 2) and np.isfinite(x).all() and rec["nfe"] == 100 and rec["seed"] == 3
    for suffix in (".png", "-trajectory.png", "-trajectory.gif"):
        assert (out / f"ddpm-100steps-seed3{suffix}").stat().st_size > 1000
    assert Image.open(out / "ddpm-100steps-seed3-trajectory.gif").n_frames > 8

    # Same seed, same samples, whatever the batch size.
    out2 = tmp_path / "s2"
    assert_ok(cli_here("sample", tiny_run, "--n", "500", "--seed", "3", "--batch-size", "48", "--out", out2))
    with np.load(out2 / "ddpm-100steps-seed3.npz") as f:
        assert np.allclose(f["samples"], x, atol=1e-5)

    r = cli_here("eval", tiny_run, "--metric", "kl", "--metric", "wasserstein", "--n", "400", "--samples", out / "ddpm-100steps-seed3.npz")
    assert_ok(r)
    w = json.loads((tiny_run / "eval" / "wasserstein-ddpm-100steps-n500.json").read_text())
    assert w["values"]["w2"] > 0 and w["floor"]["w2"] > 0 and w["protocol"]["solver"] == "ot.emd2 (exact)"
    assert w["sampling"]["seed"] == 3
    assert "w2" in r.stdout and "floor" in r.stdout
    assert "wasserstein protocol: 500 samples" in r.stdout and "sampler ddpm, 100 steps, seed 3" in r.stdout


def test_data_show_noise_writes_the_forward_process(tmp_path):
    assert_ok(cli_here("data", "show", "spiral", "--noise", "--out", tmp_path / "f.png", "--n", "300"))
    assert Image.open(tmp_path / "f.png").size[0] > 500


def test_resume_continues_to_more_steps(tmp_path):
    runs = tmp_path / "runs"
    assert_ok(cli_here("train", "--data", "moons", "--name", "m", "--runs-dir", runs, *TINY))
    r = cli_here("train", "--resume", runs / "m", "--steps", "400")
    assert_ok(r)
    assert "resuming" in r.stdout and "step 300" in r.stdout
    steps = [json.loads(line)["step"] for line in (runs / "m" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 400 and len(steps) == len(set(steps))


def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    """Roll a finished run back to its step-200 checkpoint (as if it had been killed there),
    resume it, and compare every tensor with the uninterrupted run's at step 300."""
    runs = tmp_path / "runs"
    assert_ok(cli_here("train", "--data", "circles", "--name", "full", "--runs-dir", runs, *TINY))
    shutil.copytree(runs / "full", runs / "cut")
    (runs / "cut" / "checkpoints" / "step-00000300.safetensors").unlink()
    (runs / "cut" / "latest").write_text("step-00000200.safetensors\n")
    r = cli_here("train", "--resume", runs / "cut")
    assert_ok(r)
    assert "step 200" in r.stdout
    a, _ = load(runs / "full" / "checkpoints" / "step-00000300.safetensors")
    b, _ = load(runs / "cut" / "checkpoints" / "step-00000300.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_errors_are_one_sentence(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    assert_clean_error(cli_here("train", "--data", "spirall", "--runs-dir", runs), "unknown dataset", "spiral", "8gaussians")
    assert_clean_error(cli_here("train", "--network", "transformer", "--runs-dir", runs), "unknown network", "mlp")
    assert_clean_error(cli_here("train", "--schedule", "zigzag", "--runs-dir", runs), "unknown schedule", "linear", "cosine")
    assert_clean_error(cli_here("sample", tiny_run, "--sampler", "euler", "--n", "8"), "unknown sampler", "ddpm")
    assert_clean_error(cli_here("train", "-o", "network.width=-3", "--runs-dir", runs), "width")
    assert_clean_error(cli_here("train", "-o", "data.noise=loud", "--runs-dir", runs), "noise")
    assert_clean_error(cli_here("train", "--prediction", "score", "--runs-dir", runs), "prediction")
    assert_clean_error(cli_here("sample", tmp_path / "nowhere"), "does not exist")
    assert_clean_error(cli_here("eval", tmp_path / "nowhere"), "does not exist")
    assert_clean_error(cli_here("sample", tiny_run, "--steps", "5000"), "--steps", "T = 100")
    assert not list(runs.glob("*")) if runs.exists() else True  # nothing was created by failed runs


def test_truncated_checkpoint_is_named(tmp_path):
    runs = tmp_path / "runs"
    assert_ok(cli_here("train", "--data", "moons", "--name", "t", "--runs-dir", runs, *TINY[:1], "100", *TINY[2:], "--checkpoint-every", "100"))
    ckpt = runs / "t" / "checkpoints" / "step-00000100.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    msg = assert_clean_error(cli_here("sample", runs / "t", "--n", "8"), "truncated or corrupted")
    assert "step-00000100.safetensors" in msg


def test_resume_with_an_incompatible_config(tiny_run, tmp_path):
    assert_clean_error(cli_here("train", "--resume", tiny_run, "-o", "network.width=64"), "cannot resume", "network_options")
    assert_clean_error(cli_here("train", "--resume", tiny_run, "--data", "spiral"), "cannot resume", "data")
    assert_clean_error(cli_here("train", "--resume", tiny_run), "already reached step 300")
    assert_clean_error(cli_here("train", "--resume", tmp_path / "nope"), "does not exist")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, sig):
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    p = subprocess.Popen(
        [sys.executable, "-m", "ddpmctl", "train", "--data", "moons", "--name", "i", "--runs-dir", str(runs),
         "--steps", "1000000", "--checkpoint-every", "100000", "-o", "network.width=16", "-o", "network.depth=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    metrics = runs / "i" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, out + err
    assert "Traceback" not in out + err
    assert "interrupted at step" in out and "--resume" in out
    ckpts = sorted((runs / "i" / "checkpoints").glob("step-*.safetensors"))
    assert len(ckpts) == 1 and int(ckpts[0].stem.split("-")[1]) >= 50  # saved where it stopped
    assert (runs / "i" / "latest").read_text().strip() == ckpts[0].name
