"""Checkpoints: safetensors round trip, atomic writes, damage detected and named, fallback."""

import os

import pytest
import torch

from ddpmctl import checkpoint
from ddpmctl.errors import CheckpointError, WriteError
from ddpmctl.config import TrainSettings, saved
from ddpmctl.record import DataInfo, RunRecord
from ddpmctl.run import RunDir

RECORD = RunRecord(saved(TrainSettings, {}), DataInfo((2,), 0, "points"))


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"model/w": torch.randn(64, 64, generator=g), "model/b": torch.zeros(3), "rng/g": torch.arange(5, dtype=torch.uint8)}


def test_round_trip_and_metadata(tmp_path):
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, tensors(), {"step": 7, "config": {"a": [1, 2]}})
    t, meta = checkpoint.load(p)
    assert all(torch.equal(t[k], v) for k, v in tensors().items())
    assert meta["step"] == 7 and meta["config"] == {"a": [1, 2]} and meta["ddpmctl_version"]


def test_truncated_file_is_named(tmp_path):
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, tensors(), {"step": 1})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as err:
        checkpoint.load(p)
    assert str(p) in str(err.value)


def test_flipped_bytes_are_caught_by_the_content_hash(tmp_path):
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, tensors(), {"step": 1})
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: the header still parses
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash"):
        checkpoint.load(p)


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, tensors(0), {"step": 1})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteError, match="No space left"):
        checkpoint.save(p, tensors(1), {"step": 2})
    monkeypatch.undo()
    t, meta = checkpoint.load(p)
    assert meta["step"] == 1 and torch.equal(t["model/w"], tensors(0)["model/w"])
    assert [f.name for f in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left behind


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    """The temporary file is made 0600; the result gets 0666 less the umask, as open() would
    give it, so results on a shared machine are as readable as the user's other files."""
    old = os.umask(0o022)
    try:
        checkpoint.atomic_write_bytes(tmp_path / "a.json", b"{}")
        os.umask(0o027)
        checkpoint.atomic_write_bytes(tmp_path / "b.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_run_falls_back_to_the_previous_good_checkpoint(tmp_path):
    run = RunDir.create(tmp_path / "r", RECORD)
    for step in (10, 20, 30):
        run.save_checkpoint(step, tensors(step), {}, keep=3)
    assert [s for s, _ in run.checkpoints()] == [10, 20, 30]
    assert run.latest().name == "step-00000030.safetensors"
    newest = run.latest()
    newest.write_bytes(newest.read_bytes()[:100])
    t, meta, path, skipped = run.load_checkpoint()
    assert meta["step"] == 20 and path.name == "step-00000020.safetensors"
    assert len(skipped) == 1 and "step-00000030" in skipped[0]


def test_old_checkpoints_are_pruned(tmp_path):
    run = RunDir.create(tmp_path / "r", RECORD)
    for step in range(1, 6):
        run.save_checkpoint(step, tensors(), {}, keep=2)
    assert [s for s, _ in run.checkpoints()] == [4, 5]


def test_a_random_stream_from_another_kind_of_device_restarts_from_the_seed_and_says_so():
    """A CUDA generator's Philox state cannot continue a CPU generator's Mersenne Twister stream
    (nor the reverse): resuming a run moved between CPU and GPU reseeds from (seed, rank, step)
    and says so; on the same kind of device the stream goes on exactly, without a note."""
    from ddpmctl.training import LoopConfig, make_state, stream_seed

    cfg, cpu = LoopConfig(steps=1, batch_size=4, lr=1e-3), torch.device("cpu")
    saved_state = make_state(torch.nn.Linear(2, 2), cfg, cpu, seed=3)
    torch.randint(0, 10, (5,), generator=saved_state.generator)  # move the stream on from its seed
    tensors, meta = saved_state.tensors()
    meta = {**meta, "step": 7}

    same = make_state(torch.nn.Linear(2, 2), cfg, cpu, seed=3)
    assert same.restore(dict(tensors), meta) == []
    assert torch.equal(same.generator.get_state(), saved_state.generator.get_state())

    tensors["rng/generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's (seed, offset)
    moved = make_state(torch.nn.Linear(2, 2), cfg, cpu, seed=3)
    notes = moved.restore(tensors, meta)
    assert len(notes) == 1 and "another kind of device than cpu" in notes[0]
    assert torch.equal(moved.generator.get_state(), torch.Generator().manual_seed(stream_seed(3, 0, 7)).get_state())


def test_a_channels_last_network_resumes_with_moments_in_its_parameters_layout():
    """Checkpoints hold contiguous (NCHW) tensors; a channels-last network's restored Adam moments
    must take the NHWC strides of their parameters, or CUDA's fused AdamW refuses the first step
    of a resumed image run (seen on an H200). The values must come back unchanged."""
    from ddpmctl.training import LoopConfig, make_state

    cfg, cpu = LoopConfig(steps=1, batch_size=4, lr=1e-3), torch.device("cpu")

    def state():
        torch.manual_seed(0)
        return make_state(torch.nn.Conv2d(3, 8, 3), cfg, cpu, seed=0, channels_last=True)

    saved_state = state()
    saved_state.net(torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)).square().mean().backward()
    saved_state.optimizer.step()
    tensors, meta = saved_state.tensors()
    tensors = {k: v.contiguous() for k, v in tensors.items()}  # as checkpoint.save writes them
    resumed = state()
    resumed.restore(tensors, {**meta, "step": 1})
    weight = resumed.net.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    for key in ("exp_avg", "exp_avg_sq"):
        moment = resumed.optimizer.state[weight][key]
        assert moment.stride() == weight.stride(), key
        assert torch.equal(moment, saved_state.optimizer.state[saved_state.net.weight][key])
