"""Data-parallel training on 2 CPU processes (gloo), the thread policy, and their errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from ddpmctl import distributed
from ddpmctl.checkpoint import load
from ddpmctl.devices import cpu_count, set_threads
from ddpmctl.errors import ConfigError
from tests.conftest import REPO, assert_clean_error, assert_ok, cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TINY_2D = ["--data", "8gaussians", "-o", "network.width=32", "-o", "network.depth=2", "-o", "schedule.T=100",
           "-o", "data.n=2000", "--batch-size", "128", "--checkpoint-every", "30"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, out: str) -> None:
    """One rank: 40 steps of the training loop on a tiny 2-D model, then its state to a file."""
    from ddpmctl import registry
    from ddpmctl.diffusion import DiffusionLoss
    from ddpmctl.training import Hooks, LoopConfig, make_state, train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = distributed.World(rank, size, rank, size)
    dev = distributed.init(world, torch.device("cpu"))
    try:
        torch.manual_seed(0)
        ds = registry.build("dataset", "8gaussians", {"n": 2000})
        net = registry.build("network", "mlp", {"width": 32, "depth": 2}, data_shape=(2,), num_classes=0)
        initial = {k: v.clone() for k, v in net.state_dict().items()}
        cfg = LoopConfig(steps=40, batch_size=distributed.rank_batch(128, world), lr=2e-3, warmup=5, log_every=10)
        state = make_state(net, cfg, dev, seed=0)
        logged = []
        loss_fn = DiffusionLoss(registry.build("schedule", "linear", {"T": 100}))
        train(state, loss_fn, ds.x, None, cfg, Hooks(log=logged.append))
        tensors, _ = state.tensors()  # a collective: every rank calls it
        tensors.update({f"initial/{k}": v for k, v in initial.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/rank{rank}.safetensors")
        Path(f"{out}/rank{rank}.json").write_text(json.dumps([r["loss"] for r in logged]))
    finally:
        distributed.shutdown()


def test_two_processes_keep_identical_weights_and_their_own_batches(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    trained = [k for k in r0 if k.startswith(("model/", "ema/"))]
    assert trained and all(torch.equal(r0[k], r1[k]) for k in trained)  # the replicas never drift apart
    assert any(not torch.equal(r0[k], r0[f"initial/{k[6:]}"]) for k in trained if k.startswith("model/"))
    # Each rank draws its own batches and noise, and the checkpoint keeps every rank's stream.
    assert torch.equal(r0["rng/generator.rank1"], r1["rng/generator.rank1"])
    assert not torch.equal(r0["rng/generator"], r0["rng/generator.rank1"])
    # The logged loss is the mean over the ranks: the same record on both.
    losses = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_torchrun_run_resumes_in_one_process(tmp_path):
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    env.update(ONE_THREAD, COLUMNS="200", PYTHONUNBUFFERED="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ddpmctl", "train", *TINY_2D, "--steps", "60", "--device", "cpu", "--name", "ddp", "--runs-dir", str(runs)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert_ok(r)
    run = runs / "ddp"
    assert r.stdout.count("done:") == 1 and "2 processes x 64 examples = batch 128" in r.stdout  # rank 0 alone prints
    tensors, meta = load(run / "checkpoints" / "step-00000060.safetensors")
    assert meta["step"] == 60 and "rng/generator.rank1" in tensors
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [50, 60]  # one writer: no record twice

    assert_ok(cli("train", "--resume", run, "--steps", "90", env=ONE_THREAD))
    tensors, meta = load(run / "checkpoints" / "step-00000090.safetensors")
    assert meta["step"] == 90 and "rng/generator.rank1" not in tensors
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [50, 60, 90]


def test_a_batch_that_cannot_be_split_is_one_sentence():
    env = {**ONE_THREAD, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    assert_clean_error(cli("train", *TINY_2D, "--batch-size", "127", "--steps", "5", env=env), "127", "2 processes", "multiple of 2")


def test_rank_batch_and_launch_variables():
    assert distributed.rank_batch(128, distributed.World(0, 4, 0, 4)) == 32
    assert distributed.world_from_env({}) == distributed.World()
    assert distributed.world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == distributed.World(3, 4, 1, 2)
    with pytest.raises(ConfigError, match="inconsistent"):
        distributed.world_from_env({"WORLD_SIZE": "2", "RANK": "2"})


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_policy(monkeypatch, threads_restored):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(1)
    assert set_threads(None, 1) == 1  # alone: torch's setting is left as it is
    assert set_threads(3, 2) == 3  # an explicit number wins
    assert set_threads(None, 2 * cpu_count()) == 1  # more processes than cores: one thread each
    if cpu_count() >= 2:
        assert set_threads(None, 2) == cpu_count() // 2  # the cores divided among the processes
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets when it is unset: still divided
    assert set_threads(None, 2) == max(1, cpu_count() // 2)
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own choice is kept
    assert set_threads(None, 2) == 1
