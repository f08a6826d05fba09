"""`ddpmctl sweep`: a 2 x 2 grid trained end to end, every cell with its values and the common
evaluation; an interruption; a rerun that skips finished cells and resumes the others from their
checkpoints; bad grids refused with one sentence before anything is written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from ddpmctl import api
from ddpmctl import sweeps
from ddpmctl.checkpoint import load
from ddpmctl.devices import cpu_count
from ddpmctl.errors import ConfigError
from ddpmctl.run import RunDir
from tests.conftest import assert_clean_error, assert_ok, cli_here

# 8 gaussians, a one-block MLP, T = 50, 60 steps: a cell trains in a second or two.
COMMON = ["--data", "8gaussians", "--steps", "60", "--eval-every", "30", "--eval-n", "200",
          "--set", "network.depth=1", "--set", "schedule.T=50", "--set", "data.n=2000", "--set", "batch_size=128",
          "--set", "checkpoint_every=30", "--set", "log_every=10"]
GRID = ["--grid", "lr=1e-3,3e-3", "--grid", "network.width=16,32"]
CELLS = {"lr=0.001,network.width=16": (1e-3, 16), "lr=0.001,network.width=32": (1e-3, 32),
         "lr=0.003,network.width=16": (3e-3, 16), "lr=0.003,network.width=32": (3e-3, 32)}


def sweep_args(runs: Path, *extra) -> list:
    return ["sweep", "--name", "lw", "--runs-dir", runs, *COMMON, *GRID, "--parallel", "2", *extra]


def checkpoint_times(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.safetensors")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, str]:
    """The 2 x 2 sweep, trained through the CLI (treat as read-only)."""
    runs = tmp_path_factory.mktemp("sweeps")
    r = cli_here(*sweep_args(runs))
    assert_ok(r)
    return runs, r.stdout


def test_every_cell_is_trained_with_its_values_and_the_common_evaluation(swept):
    runs, out = swept
    folder = runs / "lw"
    record = json.loads((folder / "sweep.json").read_text())
    assert record["grid"] == {"lr": [1e-3, 3e-3], "network.width": [16, 32]}
    assert record["cells"] == {name: {"lr": lr, "network.width": width} for name, (lr, width) in CELLS.items()}
    for name, (lr, width) in CELLS.items():
        cfg = RunDir.open(folder / name).record.config
        assert (cfg.lr, cfg.network_options) == (lr, {"width": width, "depth": 1}), name
        assert (cfg.data, cfg.steps, cfg.eval_every, cfg.eval_n, cfg.schedule_options) == ("8gaussians", 60, 30, 200, {"T": 50})
        assert cfg.threads == max(1, cpu_count() // 2)  # two cells at once share the cores
        evals = [r for r in RunDir(folder / name).metrics() if r.get("event") == "eval"]
        assert [(e["step"], e["metric"], e["n"]) for e in evals] == [(0, "wasserstein", 200), (30, "wasserstein", 200), (60, "wasserstein", 200)]
        assert json.loads((folder / name / "stop.json").read_text())["reason"] == "steps"
        assert tomllib.loads((folder / f"{name}.toml").read_text())["lr"] == lr
        assert "done: 60 steps" in (folder / f"{name}.log").read_text()
    table = json.loads((folder / "compare.json").read_text())
    assert sorted(row["run"] for row in table["runs"]) == sorted(CELLS) and table["metric"] == "w2"
    assert all(row["steps"] == 60 and row["final_metric"] > 0 for row in table["runs"])
    assert (folder / "compare.png").stat().st_size > 10_000
    assert "convergence" in out and all(name in out for name in CELLS)


def test_a_rerun_skips_finished_cells_and_resumes_the_others_from_their_checkpoints(swept, tmp_path):
    """Cut a finished sweep back as an interruption leaves it: one cell stopped at its step-30
    checkpoint, one killed before its run directory was made; two finished."""
    runs, _ = swept
    shutil.copytree(runs, tmp_path / "runs")
    folder = tmp_path / "runs" / "lw"
    cut, gone, *kept = CELLS
    (folder / cut / "checkpoints" / "step-00000060.safetensors").unlink()
    (folder / cut / "latest").write_text("step-00000030.safetensors\n")
    (folder / cut / "stop.json").write_text(json.dumps({"reason": "interrupted", "step": 30}))
    shutil.rmtree(folder / gone)
    before = {name: checkpoint_times(folder / name) for name in kept}
    logs = {name: (folder / f"{name}.log").read_text() for name in kept}
    r = cli_here(*sweep_args(tmp_path / "runs"))
    assert_ok(r)
    for name in kept:
        assert f"{name}: finished before (steps), not run again" in r.stdout
        assert checkpoint_times(folder / name) == before[name] and (folder / f"{name}.log").read_text() == logs[name]
    assert f"resume {cut}" in r.stdout and f"start {gone}" in r.stdout
    assert "resuming" in (folder / f"{cut}.log").read_text() and "(step 30)" in (folder / f"{cut}.log").read_text()
    a, _ = load(runs / "lw" / cut / "checkpoints" / "step-00000060.safetensors")
    b, _ = load(folder / cut / "checkpoints" / "step-00000060.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed, not trained again from step 0
    assert all(json.loads((folder / name / "stop.json").read_text())["reason"] == "steps" for name in CELLS)
    # Everything finished: the API's sweep runs nothing and returns the run directories.
    paths = api.sweep("lw", {"lr": [1e-3, 3e-3], "network.width": [16, 32]}, runs_dir=tmp_path / "runs", parallel=2, data="8gaussians",
                      steps=60, eval_every=30, eval_n=200, network_options={"depth": 1}, schedule_options={"T": 50},
                      data_options={"n": 2000}, batch_size=128, checkpoint_every=30, log_every=10)
    assert paths == [folder / name for name in CELLS]


def test_a_failing_cell_ends_the_sweep_with_one_sentence_naming_its_log(swept, tmp_path):
    """A cell whose only checkpoint is damaged cannot resume: the sweep starts no further cell."""
    runs, _ = swept
    shutil.copytree(runs, tmp_path / "runs")
    folder = tmp_path / "runs" / "lw"
    broken, gone, *_ = CELLS
    ckpts = folder / broken / "checkpoints"
    (folder / broken / "stop.json").unlink()
    (ckpts / "step-00000060.safetensors").unlink()
    (folder / broken / "latest").write_text("step-00000030.safetensors\n")
    (ckpts / "step-00000030.safetensors").write_bytes((ckpts / "step-00000030.safetensors").read_bytes()[:500])
    shutil.rmtree(folder / gone)
    args = sweep_args(tmp_path / "runs")
    args[args.index("--parallel") + 1] = "1"
    msg = assert_clean_error(cli_here(*args), f"sweep cell {broken} (exit 1) failed", f"{broken}.log", "run the sweep again")
    assert str(folder / f"{broken}.log") in msg
    assert "truncated or corrupted" in (folder / f"{broken}.log").read_text()
    assert not (folder / gone).exists()  # after a failure no cell starts


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_checkpoints_its_running_cell_and_says_how_to_resume(tmp_path, how):
    """Ctrl-C reaches the sweep and its cells (one process group); SIGTERM the sweep alone, which
    passes it on."""
    runs = tmp_path / "runs"
    args = [a if a != "60" else "100000" for a in sweep_args(runs)]
    args[args.index("--parallel") + 1] = "1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    p = subprocess.Popen([sys.executable, "-m", "ddpmctl", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**env, "COLUMNS": "200"}, start_new_session=True)
    first = runs / "lw" / next(iter(CELLS))
    try:
        deadline = time.time() + 240
        while not ((first / "metrics.jsonl").exists() and (first / "metrics.jsonl").read_text().count("\n") >= 2):
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.2)
        if how == "ctrl-c":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:  # a sweep that did not stop must not outlive the test, nor its cells
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == (130 if how == "ctrl-c" else 143), out + err
    assert "Traceback" not in out + err and "Run the same command again to resume" in out
    stop = json.loads((first / "stop.json").read_text())
    assert stop["reason"] == "interrupted" and stop["step"] > 0
    assert (first / "latest").read_text().strip() == f"step-{stop['step']:08d}.safetensors"  # saved where it stopped
    assert "interrupted at step" in (runs / "lw" / f"{first.name}.log").read_text()
    assert not any((runs / "lw" / name).exists() for name in list(CELLS)[1:])  # one at a time: the others never started
    assert not (runs / "lw" / "compare.png").exists()


@pytest.mark.parametrize("grid, fragments", [
    (["stepz=10,20"], ["stepz", "not a setting", "steps"]),
    (["lr=abc,1e-3"], ["lr=abc", "lr", "abc"]),
    (["steps=-1,10"], ["steps=-1", "steps", "greater than or equal to 1"]),
    (["lr="], ["lr", "no values"]),
    (["lr=1e-3,"], ["lr", "empty value"]),
    (["lr=1e-3,0.001"], ["lr", "repeats"]),
    (["lr=1e-3", "lr=3e-4"], ["lr", "given twice"]),
    (["name=a,b"], ["name", "cannot vary"]),
    (["eval_n=100,200"], ["eval_n", "evaluated the same way"]),
    (["network.widht=16,32"], ["network.widht=16", "widht", "not a known option"]),
    (["batch_size=64,128"], ["batch_size", "both in the grid and in the common settings"]),
    (["lr"], ["--grid", "KEY=V1,V2"]),
])
def test_a_bad_grid_is_one_sentence_before_anything_is_written(tmp_path, grid, fragments):
    runs = tmp_path / "runs"
    args = ["sweep", "--name", "bad", "--runs-dir", runs, "--data", "8gaussians", "--set", "batch_size=128"]
    for g in grid:
        args += ["--grid", g]
    assert_clean_error(cli_here(*args), *fragments)
    assert not runs.exists()


def test_bad_common_settings_are_refused_before_anything_is_written(tmp_path):
    runs = tmp_path / "runs"
    assert_clean_error(cli_here("sweep", "--name", "bad", "--runs-dir", runs, *GRID, "--set", "name=x"), "name", "--name")
    assert_clean_error(cli_here("sweep", "--name", "bad", "--runs-dir", runs, *GRID, "--steps", "0"), "common settings", "steps")
    assert_clean_error(cli_here("sweep", "--name", "a/b", "--runs-dir", runs, *GRID), "sweep name")
    assert_clean_error(cli_here("sweep", "--name", "bad", "--runs-dir", runs, *GRID, "--quality", "w2<<1"), "--quality")
    assert not runs.exists()
    with pytest.raises(ConfigError, match="needs a list of values"):
        api.sweep("bad", {"lr": 1e-3}, runs_dir=runs)
    assert not runs.exists()


def test_a_changed_grid_for_an_existing_sweep_is_refused(swept):
    runs, _ = swept
    record = (runs / "lw" / "sweep.json").read_bytes()
    entries = sorted(p.name for p in (runs / "lw").iterdir())
    changed_grid = [a if a != "lr=1e-3,3e-3" else "lr=1e-3,1e-2" for a in sweep_args(runs)]
    assert_clean_error(cli_here(*changed_grid), "other settings", "grid lr was 0.001, 0.003, now 0.001, 0.01", "sweep.json")
    changed_steps = [a if a != "60" else "80" for a in sweep_args(runs)]
    assert_clean_error(cli_here(*changed_steps), "other settings", "steps was 60, now 80")
    assert (runs / "lw" / "sweep.json").read_bytes() == record and sorted(p.name for p in (runs / "lw").iterdir()) == entries


def test_cell_names_are_safe_file_names_and_the_cell_settings_round_trip_through_toml():
    assert sweeps.cell_name({"data": "a/b c", "lr": 3e-4, "network.channels": [32, 64], "learn_sigma": True}) \
        == "data=a_b_c,lr=0.0003,network.channels=32_64,learn_sigma=true"
    assert len(sweeps.cell_name({"data": "x" * 400})) <= 150
    values = {"lr": 1e-05, "steps": 60, "learn_sigma": False, "data": 'we"ird\\ \x01\x7f é', "max_time": float("inf"),
              "network_options": {"width": 32, "channels": [1, 2.5]}, "eval_options": {}, "teacher": "runs/a b"}
    assert tomllib.loads(sweeps.to_toml(values)) == values
    assert sweeps.settings_of({"network.width": 3, "network.depth": 1, "batch-size": 8, "schedule_options.T": 9}) \
        == {"network_options": {"width": 3, "depth": 1}, "batch_size": 8, "schedule_options": {"T": 9}}
