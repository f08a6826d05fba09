"""Fault injection: training killed with SIGKILL at seeded random points resumes every time,
loses at most one checkpoint interval, and ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddpmctl.checkpoint import load
from tests.conftest import assert_ok, cli

STEPS, EVERY = 400, 20
ARGS = ["--data", "moons", "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--batch-size", "64",
        "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=50", "-o", "data.n=2000"]
ENV = {"DDPMCTL_LOG_EVERY": "5", "OMP_NUM_THREADS": "1"}


def logged_step(run: Path) -> int:
    f = run / "metrics.jsonl"
    if not f.exists():
        return 0
    steps = [json.loads(line)["step"] for line in f.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def spawn(args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    env.update(ENV)
    return subprocess.Popen([sys.executable, "-m", "ddpmctl", "train", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    runs = tmp_path / "runs"
    assert_ok(cli("train", *ARGS, "--name", "straight", "--runs-dir", runs, env=ENV))

    rng = random.Random(1234)
    targets = sorted(rng.sample(range(5, STEPS - 10, 5), 10))  # kill once past each of these steps
    run = runs / "killed"
    kills = 0
    for k, target in enumerate(targets):
        p = spawn(["--resume", run] if k else [*ARGS, "--name", "killed", "--runs-dir", runs])
        while logged_step(run) < target and p.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere: mid-step, mid-checkpoint, mid-log
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        # At most one checkpoint interval is lost.
        ckpts = sorted(int(c.stem.split("-")[1]) for c in (run / "checkpoints").glob("step-*.safetensors")) if (run / "checkpoints").exists() else [0]
        assert logged_step(run) - max(ckpts or [0]) <= EVERY + 5
    assert kills >= 10

    p = spawn(["--resume", run])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    a, _ = load(runs / "straight" / "checkpoints" / f"step-{STEPS:08d}.safetensors")
    b, _ = load(run / "checkpoints" / f"step-{STEPS:08d}.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not list(run.rglob("*.tmp"))
