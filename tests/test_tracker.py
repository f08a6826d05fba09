"""The TensorBoard tracker: a short 2-D run's event files, read back with TensorBoard's own reader,
hold the metrics.jsonl values as scalars, its events as text and its plots as images; a resumed
session's events replace the ones after its checkpoint, as metrics.jsonl's records do; an image
run's sample grids arrive as images; without the tensorboard package the tracker is refused
before anything is trained."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ddpmctl import registry, trackers
from ddpmctl.run import RunDir
from tests.conftest import assert_clean_error, assert_ok, cli_here, write_images

pytest.importorskip("tensorboard", reason='the tracker is an extra: pip install "ddpmctl[tensorboard]"')
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["--data", "8gaussians", "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=50", "-o", "data.n=1000",
        "--batch-size", "64", "--threads", "1", "--checkpoint-every", "20", "--eval-every", "20", "--eval-n", "200"]
ENV = {"DDPMCTL_LOG_EVERY": "5", "OMP_NUM_THREADS": "1"}


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_short_run_sends_its_records_and_plots_to_tensorboard(tmp_path):
    r = cli_here("train", *TINY, "--steps", "40", "--name", "tb", "--runs-dir", tmp_path, "--tracker", "tensorboard", env=ENV)
    assert_ok(r)
    run = tmp_path / "tb"
    acc = events(run)
    recs = records(run)
    losses = [rec for rec in recs if "loss" in rec]
    assert len(losses) == 8
    for key in ("loss", "grad_norm", "lr", "time"):  # every value of every loss record, at its step
        assert scalars(acc, key) == [(rec["step"], pytest.approx(rec[key], rel=1e-6)) for rec in losses], key
    evals = [rec for rec in recs if rec.get("event") == "eval"]
    assert [rec["step"] for rec in evals] == [0, 20, 40]
    assert scalars(acc, "wasserstein/w2") == [(rec["step"], pytest.approx(rec["values"]["w2"], rel=1e-6)) for rec in evals]
    texts = [json.loads(e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("events/text_summary")]
    assert [t["step"] for t in texts] == [0, 20, 40] and texts[0]["metric"] == "wasserstein"
    images = acc.Tags()["images"]
    assert {"loss", "convergence", "samples-over-training"} <= set(images)
    img = acc.Images("samples-over-training")[-1]
    assert img.step == 40 and img.width > 100 and img.height > 100 and img.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_run_replaces_the_events_after_its_checkpoint_and_the_env_variable_turns_it_on(tmp_path):
    run = tmp_path / "tb"
    assert_ok(cli_here("train", *TINY, "--steps", "30", "--name", "tb", "--runs-dir", tmp_path, env={**ENV, "DDPMCTL_TRACKER": "tensorboard"}))
    assert_ok(cli_here("train", "--resume", run, "--steps", "50", env=ENV))  # resumed from step 20: steps 25 and 30 again
    acc = events(run)
    losses = [rec for rec in records(run) if "loss" in rec]
    assert [rec["step"] for rec in losses] == list(range(5, 55, 5))
    assert scalars(acc, "loss") == [(rec["step"], pytest.approx(rec["loss"], rel=1e-6)) for rec in losses]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per session


def test_an_image_run_sends_its_sample_grids(tmp_path):
    write_images(tmp_path / "imgs", 16)
    r = cli_here("train", "--data", "imagefolder", "-o", f"data.root={tmp_path / 'imgs'}", "-o", "data.size=8", "--steps", "4",
                 "--batch-size", "8", "-o", "network.channels=8", "-o", "network.channel_mult=[1,2]", "-o", "schedule.T=20", "--checkpoint-every", "4",
                 "--name", "img", "--runs-dir", tmp_path / "runs", "--tracker", "tensorboard", "--threads", "1",
                 env={**ENV, "DDPMCTL_SAMPLE_EVERY": "2", "DDPMCTL_DATA_DIR": str(tmp_path / "data")})
    assert_ok(r)
    run = tmp_path / "runs" / "img"
    grids = events(run).Images("grids")
    assert [g.step for g in grids] == [2, 4]
    assert sorted(p.name for p in (run / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]


def test_without_tensorboard_the_tracker_is_refused_before_training(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    r = cli_here("train", *TINY, "--steps", "10", "--name", "tb", "--runs-dir", tmp_path, "--tracker", "tensorboard", env=ENV)
    assert_clean_error(r, "the tensorboard tracker needs the tensorboard package", 'pip install "ddpmctl[tensorboard]"')
    assert not (tmp_path / "tb").exists()


def test_unknown_trackers_and_options_are_one_sentence(tmp_path):
    r = cli_here("train", *TINY, "--steps", "10", "--runs-dir", tmp_path, "--tracker", "wandb", env=ENV)
    assert_clean_error(r, "unknown tracker 'wandb'", "tensorboard")
    r = cli_here("train", *TINY, "--steps", "10", "--runs-dir", tmp_path, "--tracker", "tensorboard", "-o", "tracker.flush_secs=0", env=ENV)
    assert_clean_error(r, "flush_secs")
    assert not list(tmp_path.iterdir())


def test_a_tracker_plugin_gets_the_records_and_pictures(tmp_path):
    """The contract a W&B or MLflow tracker would meet: built by name through the registry, handed
    each record and picture, closed at the end."""
    assert "tensorboard" in registry.names("tracker")
    got = []

    class Recorder(trackers.Tracker):
        def record(self, rec):
            got.append(("record", rec["step"]))

        def picture(self, tag, step, path):
            got.append(("picture", tag, step, Path(path).is_file()))

        def close(self):
            got.append(("close",))

    run = RunDir(tmp_path)
    run.tracker = Recorder()
    run.log({"step": 5, "loss": 1.0})
    (tmp_path / "g.png").write_bytes(b"")
    run.wrote_picture(tmp_path / "g.png", 5, "grids")
    run.unlock()
    assert got == [("record", 5), ("picture", "grids", 5, True), ("close",)]
    assert run.tracker is None
