"""Convergence you can watch: quality measured during training, stop criteria, plots, and the
comparison of runs. Thresholds are read off a reference run, never hard-coded: the same seed
trains the same model, so a criterion must stop the run exactly where the reference crossed it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import ddpmctl

from ddpmctl.convergence import curve, first_crossing
from ddpmctl.stopping import Criteria, Threshold, parse_duration, smoothed
from ddpmctl.run import RunDir
from tests.conftest import TINY, TINY_SETTINGS, assert_ok, cli_here

LOG10 = {"DDPMCTL_LOG_EVERY": "10", "OMP_NUM_THREADS": "1"}
WATCH = ["--eval-every", "50", "--eval-n", "300"]


def in_process(*args):
    """A light command (no training) run in this process, as Typer runs it."""
    from typer.testing import CliRunner

    from ddpmctl.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def records(run) -> list[dict]:
    return RunDir(run).metrics()


def evals(run) -> list[dict]:
    return [r for r in records(run) if r.get("event") == "eval"]


def stop(run) -> dict:
    return json.loads((run / "stop.json").read_text())


def new_minimum(points: list[tuple[int, float, float]], after: int = 100) -> tuple[int, float]:
    """A (step, threshold) where the curve first drops below everything before it (after step
    ``after``, before the last point), with the threshold halfway between: met there, not before."""
    for i in range(1, len(points) - 1):
        step, _, v = points[i]
        before = min(p[2] for p in points[:i])
        if step >= after and v < before:
            return step, (v + before) / 2
    pytest.fail(f"no new minimum in {points}")


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """The reference: TINY on 8 gaussians, evaluated every 50 steps, a loss record every 10 steps."""
    runs = tmp_path_factory.mktemp("runs")
    return ddpmctl.train(data="8gaussians", name="watched", runs_dir=runs, log_every=10, eval_every=50, eval_n=300, **TINY_SETTINGS).path


@pytest.fixture(scope="module")
def stopped(watched):
    """The same run with --until-metric set where the reference's W2 first dropped to a new low."""
    step, x = new_minimum(curve(records(watched), "w2"))
    r = cli_here("train", "--data", "8gaussians", "--name", "stopped", "--runs-dir", watched.parent, *TINY, *WATCH,
            "--until-metric", f"wasserstein<={x!r}", env=LOG10)
    assert_ok(r)
    assert "stopped" in r.stdout
    return watched.parent / "stopped", step, x


def test_evaluations_are_logged_plotted_and_leave_training_alone(watched, tiny_run):
    ev = evals(watched)
    assert [r["step"] for r in ev] == list(range(0, 301, 50))  # step 0 first: the metric is checked before training
    assert all(r["metric"] == "wasserstein" and r["values"]["w2"] > 0 and r["floor"]["w2"] > 0 and r["n"] == 300 for r in ev)
    assert all(r["sampler"] == "ddim" and r["nfe"] == r["steps"] == 50 for r in ev)
    times = [r["time"] for r in records(watched)]
    assert times == sorted(times)
    assert ev[-1]["values"]["w2"] < ev[0]["values"]["w2"] / 2  # training helps
    for png in ("convergence.png", "samples-over-training.png", "loss.png"):
        assert Image.open(watched / png).size[0] > 300
    assert sorted(p.name for p in (watched / "convergence").iterdir()) == [f"step-{s:08d}.npz" for s in range(0, 301, 50)]
    assert stop(watched)["reason"] == "steps" and stop(watched)["step"] == 300

    # Sampling and scoring the EMA weights changes nothing in training: tiny_run (same seed, no
    # evaluations, a loss record every 50 steps) has the means of watched's records every 10.
    fine = {r["step"]: r["loss"] for r in records(watched) if "loss" in r}
    for r in records(tiny_run):
        mean = sum(fine[s] for s in range(r["step"] - 40, r["step"] + 1, 10)) / 5
        assert mean == pytest.approx(r["loss"], rel=1e-4), r["step"]


def test_until_metric_stops_at_the_first_evaluation_that_meets_it(stopped, watched):
    run, step, x = stopped
    s = stop(run)
    assert s["reason"] == "until-metric" and s["step"] == step and step < 300
    (met,) = s["met"].values()
    assert met["step"] == step and met["value"] <= x
    assert all(r["step"] <= step for r in records(run))  # nothing after the stop
    assert (run / "latest").read_text().strip() == f"step-{step:08d}.safetensors"  # a checkpoint where it stopped
    ref = {r["step"]: r["values"]["w2"] for r in evals(watched)}
    assert all(r["values"]["w2"] == pytest.approx(ref[r["step"]], rel=1e-4) for r in evals(run))
    assert all(r["values"]["w2"] > x for r in evals(run)[:-1])
    assert (run / "convergence.png").is_file() and (run / "samples-over-training.png").is_file()


def test_until_loss_stops_where_the_smoothed_loss_first_meets_it(watched, tmp_path):
    step, x = new_minimum(curve(records(watched), "loss"), after=150)
    r = cli_here("train", "--data", "8gaussians", "--name", "l", "--runs-dir", tmp_path, *TINY, "--until-loss", repr(x), env=LOG10)
    assert_ok(r)
    s = stop(tmp_path / "l")
    assert s["reason"] == "until-loss" and s["step"] == step
    assert s["smoothed_loss"] <= x and s["met"][f"loss<={x:g}"]["step"] == step


def test_max_time_stops_the_run_and_records_when(tmp_path):
    r = cli_here("train", "--data", "8gaussians", "--name", "t", "--runs-dir", tmp_path, *TINY[2:], "--steps", "1000000", "--max-time", "0.5s",
            env={"OMP_NUM_THREADS": "1"})
    assert_ok(r)
    s = stop(tmp_path / "t")
    assert s["reason"] == "max-time" and 0 < s["step"] < 1_000_000 and s["time"] >= 0.5
    assert s["criteria"]["max_time"] == 0.5 and s["met"]["time>=0.5s"]["step"] == s["step"]
    assert (tmp_path / "t" / "latest").read_text().strip() == f"step-{s['step']:08d}.safetensors"


def test_a_stopped_run_resumes_with_its_criterion_off_and_its_wall_time_adds_up(stopped, tmp_path):
    import shutil

    run = tmp_path / "again"
    shutil.copytree(stopped[0], run)
    before = max(r["time"] for r in records(run))
    assert_ok(cli_here("train", "--resume", run, "--until-metric", "none", env=LOG10))
    after = [r for r in records(run) if r["step"] > stopped[1]]
    assert after and min(r["time"] for r in after) > before
    assert stop(run)["reason"] == "steps" and stop(run)["criteria"]["until_metric"] is None


def test_compare_overlays_runs_and_tabulates_time_to_quality(watched, stopped):
    run, step, x = stopped
    out = watched.parent / "cmp.png"
    r = in_process("compare", watched, run, "--quality", f"w2<={x!r}", "--out", out)
    assert "watched" in r.stdout and "stopped" in r.stdout and "steps to" in r.stdout
    assert Image.open(out).size[0] > 500
    rows = {row["run"]: row for row in json.loads(out.with_suffix(".json").read_text())["runs"]}
    for name, path in (("watched", watched), ("stopped", run)):
        # the table's time to quality is the first evaluation at or below x, read here from metrics.jsonl
        first = next(r for r in evals(path) if r["values"]["w2"] <= x)
        assert rows[name]["reached"]["step"] == first["step"] == step and rows[name]["reached"]["time"] == first["time"]
        assert rows[name]["final_metric"] == evals(path)[-1]["values"]["w2"]
    assert rows["stopped"]["stopped"] == "until-metric" and rows["watched"]["stopped"] == "steps"

    (run / "convergence.png").unlink()
    r = in_process("plot", run)
    assert (run / "convergence.png").is_file() and "convergence.png" in r.stdout and "samples-over-training.png" in r.stdout


# -- the pieces, in process --------------------------------------------------------------------
def test_thresholds_and_durations_parse_or_say_what_is_wrong():
    t = Threshold.parse(" wasserstein <= 0.1 ")
    assert (t.name, t.op, t.value) == ("wasserstein", "<=", 0.1) and str(t) == "wasserstein<=0.1"
    assert t.key("wasserstein", {"w2": 0.3}) == "w2" and Threshold.parse("w2<=1").key("wasserstein", {"w2": 0.3}) == "w2"
    assert Threshold.parse("entropy/log(10)>=0.9").met(0.95) and not Threshold.parse("w2<=0.1").met(0.2)
    assert Threshold.parse("x<=1").key("other", {"w2": 1.0}) is None
    for bad in ("w2=0.1", "w2<0.1", "<=0.1", "w2<=x", "w2<=nan"):
        with pytest.raises(ValueError, match="NAME<=X"):
            Threshold.parse(bad)
    assert parse_duration("90") == 90 and parse_duration("90s") == 90 and parse_duration("15m") == 900
    assert parse_duration("1h30m") == 5400 and parse_duration(2.5) == 2.5
    for bad in ("15x", "m", "1h-3"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_criteria_meet_each_threshold_once_at_its_first_crossing():
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    c = Criteria(until_loss=smoothed(losses[:7]))  # first met at the 7th record
    for i, loss in enumerate(losses):
        c.on_record({"step": 10 * (i + 1), "time": float(i), "loss": loss})
    assert c.reason == "until-loss" and list(c.met.values())[0]["step"] == 70
    m = Criteria(until_metric=Threshold.parse("w2<=0.5"))
    recs = [{"step": s, "time": s / 10, "event": "eval", "metric": "wasserstein", "values": {"w2": v}} for s, v in ((0, 2.0), (50, 0.5), (100, 0.1))]
    for r in recs:
        m.on_record(r)
    assert m.reason == "until-metric" and m.met["w2<=0.5"]["step"] == 50
    assert first_crossing(recs, Threshold.parse("wasserstein<=0.3")) == {"key": "w2", "step": 100, "time": 10.0, "value": 0.1}
    assert first_crossing(recs, Threshold.parse("w2<=0.01")) is None
    t = Criteria(max_time=5.0)
    t.on_time(7, 4.9)
    assert t.reason is None
    t.on_time(8, 5.1)
    assert t.reason == "max-time" and t.met["time>=5s"]["step"] == 8
