"""The Python API (ddpmctl.api): train, load, sample and evaluate in-process, and runs written
before it existed (tests/fixtures/run-0.1.0-8gaussians, made by ddpmctl 0.1.0 before the API)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpmctl
from ddpmctl.checkpoint import load as load_checkpoint, split
from ddpmctl.errors import ConfigError, OptionsError, RunError
from ddpmctl.events import Events
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "run-0.1.0-8gaussians"
FIXTURE_SAMPLES = REPO / "tests" / "fixtures" / "run-0.1.0-8gaussians-ddim-10steps-seed3.npz"
TINY = dict(data="8gaussians", data_options={"n": 2000}, network_options={"width": 16, "depth": 2}, schedule_options={"T": 20},
            batch_size=128, steps=60, checkpoint_every=30, log_every=10, threads=1)


class Recorder(Events):
    def __init__(self):
        self.records, self.notes, self.progress_calls = [], [], []

    def record(self, rec):
        self.records.append(rec)

    def note(self, text, level="info"):
        self.notes.append((level, text))

    def progress(self, task, done, total, info=""):
        self.progress_calls.append((task, done, total))


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> tuple[ddpmctl.Run, Recorder]:
    events = Recorder()
    run = ddpmctl.train(**TINY, name="api", runs_dir=tmp_path_factory.mktemp("runs"), events=events)
    return run, events


def test_train_returns_a_run_and_reports_what_it_writes(api_run):
    run, events = api_run
    assert isinstance(run, ddpmctl.Run) and run.step == 60 and run.config.steps == 60
    assert run.record.data.shape == (2,) and run.record.data.kind == "points" and run.record.parameters > 0
    written = [r for r in run.metrics() if "loss" in r]
    assert [r["step"] for r in written] == [10, 20, 30, 40, 50, 60]
    assert [r["step"] for r in events.records if "loss" in r] == [r["step"] for r in written]
    assert ("train", 60, 60) in events.progress_calls
    assert json.loads((run.path / "stop.json").read_text())["reason"] == "steps"


def test_samples_are_a_function_of_the_seed_and_round_trip_through_their_file(api_run, tmp_path):
    run, _ = api_run
    a = run.sample(n=100, sampler="ddim", steps=10, seed=5)
    b = ddpmctl.Run.load(run.path).sample(n=100, sampler="ddim", steps=10, seed=5, batch_size=32)
    c = run.sample(n=100, sampler="ddim", steps=10, seed=6)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.record["nfe"] == 10 and a.record["seed"] == 5
    back = ddpmctl.Samples.load(a.save(tmp_path / "s.npz"))
    assert torch.equal(back.x, a.x) and back.record == a.record and back.labels is None


def test_evaluate_gives_the_metric_beside_its_floor(api_run):
    run, _ = api_run
    ev = run.evaluate(["wasserstein", "kl"], n=300, sampler="ddim", steps=10)
    assert set(ev.results) == {"wasserstein", "kl"}
    w2 = ev.results["wasserstein"]
    assert 0 < w2.floor["w2"] < w2.values["w2"] and ev.samples.record["nfe"] == 10
    again = run.evaluate("wasserstein", samples=ev.samples)  # the same samples, scored again: the same figure
    assert again.results["wasserstein"].values == w2.values
    paths = ev.save()
    assert [p.name for p in paths] == ["wasserstein-ddim-10steps-n300.json", "kl-ddim-10steps-n300.json"]


def test_a_stop_callback_ends_with_a_checkpoint_and_the_run_resumes(tmp_path):
    calls = []
    run = ddpmctl.train(**{**TINY, "steps": 200}, name="stopped", runs_dir=tmp_path, stop=lambda: calls.append(1) or len(calls) >= 45)
    assert run.step == 45 and json.loads((run.path / "stop.json").read_text())["reason"] == "interrupted"
    more = ddpmctl.train(resume=run.path, threads=1)
    assert more.step == 200
    with pytest.raises(ConfigError, match="different config"):
        ddpmctl.train(resume=run.path, steps=300, lr=1e-4)


def test_bad_input_raises_one_sentence(api_run, tmp_path):
    run, _ = api_run
    with pytest.raises(OptionsError, match="more than the model's T = 20"):
        run.sample(steps=50)
    with pytest.raises(OptionsError, match="class-conditional"):
        run.sample(classes=3)
    with pytest.raises(RunError, match="does not exist"):
        ddpmctl.Run.load(tmp_path / "nothing")
    with pytest.raises(ddpmctl.DdpmctlError, match="unknown dataset"):
        ddpmctl.load_dataset("spirall")


def test_load_dataset_builds_a_plugin_with_options():
    ds = ddpmctl.load_dataset("spiral", n=500)
    assert ds.x.shape == (500, 2) and ds.kind == "points" and ds.fresh(10, 1)[0].shape == (10, 2)


# -- runs written before the API -------------------------------------------------------------


def test_a_run_written_before_the_api_loads_and_gives_the_same_samples():
    run = ddpmctl.Run.load(FIXTURE, device="cpu")
    assert run.record.versions["ddpmctl"] == "0.1.0" and run.step == 60 and run.config.network_options == {"width": 16, "depth": 2}
    with np.load(FIXTURE_SAMPLES, allow_pickle=False) as f:
        then = torch.from_numpy(f["samples"])
        rec = json.loads(str(f["record"]))
    now = run.sample(n=rec["n"], sampler=rec["sampler"], steps=rec["steps"], seed=rec["seed"])
    assert torch.allclose(now.x, then, atol=1e-6), (now.x - then).abs().max()


def test_a_run_written_before_the_api_resumes_to_its_uninterrupted_weights(tmp_path):
    """The fixture trained 60 steps in one go; resumed from its step-30 checkpoint with today's
    code, it must end with the same weights."""
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    (run / "checkpoints" / "step-00000060.safetensors").unlink()
    (run / "latest").write_text("step-00000030.safetensors\n")
    resumed = ddpmctl.train(resume=run, threads=1, device="cpu")  # bit for bit: the device it was written on
    assert resumed.step == 60
    then, _ = load_checkpoint(FIXTURE / "checkpoints" / "step-00000060.safetensors")
    now, _ = load_checkpoint(run / "checkpoints" / "step-00000060.safetensors")
    for part in ("model", "ema"):
        a, b = split(then, part), split(now, part)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), part
    # metrics.jsonl was cut back to step 30 and written again: step 50's loss now averages steps 31-50
    # (it averaged 1-50), step 60's the same steps 51-60 as before.
    then = [(r["step"], r["loss"]) for r in map(json.loads, (FIXTURE / "metrics.jsonl").read_text().splitlines())]
    now = [(r["step"], r["loss"]) for r in resumed.metrics() if "loss" in r]
    assert [s for s, _ in now] == [50, 60] and now[1][1] == pytest.approx(then[1][1], rel=1e-5)


def test_a_damaged_record_is_one_sentence(tmp_path):
    run = tmp_path / "bad"
    shutil.copytree(FIXTURE, run)
    record = json.loads((run / "config.json").read_text())
    del record["data"]["kind"]
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match="not a ddpmctl run record"):
        ddpmctl.Run.load(run)
    record["data"]["kind"] = "points"
    record["config"]["steps"] = -1
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match="steps"):
        ddpmctl.Run.load(run)


def test_the_cli_is_a_face_over_the_api(tmp_path, monkeypatch, capsys):
    """`ddpmctl sample` writes what Run.sample returns, in the one samples format."""
    from tests.conftest import run_in_process

    code, out, err = run_in_process(["sample", str(FIXTURE), "--n", "64", "--sampler", "ddim", "--steps", "10", "--seed", "3",
                                     "--out", str(tmp_path)], {}, monkeypatch, capsys)
    assert code == 0, out + err
    written = ddpmctl.Samples.load(tmp_path / "ddim-10steps-seed3.npz")
    direct = ddpmctl.Run.load(FIXTURE).sample(n=64, sampler="ddim", steps=10, seed=3)
    assert torch.equal(written.x, direct.x) and written.record == direct.record
    assert Path(tmp_path / "ddim-10steps-seed3.png").is_file()


def test_min_snr_weighting_trains_and_is_recorded(tmp_path):
    run = ddpmctl.train(**TINY, name="minsnr", runs_dir=tmp_path, loss_weighting="min-snr", snr_gamma=2.0)
    assert run.config.loss_weighting == "min-snr" and run.config.snr_gamma == 2.0
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert len(losses) == 6 and all(0 < v < 10 for v in losses)
    with pytest.raises(ConfigError, match="different config"):  # the weighting changes the weights: not resumable
        ddpmctl.train(resume=run.path, steps=80, loss_weighting="none")
