"""`ddpmctl bench quality` and `ddpmctl interpolate` on a tiny learned-variance 2-D run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ddpmctl

from tests.conftest import assert_clean_error, assert_ok, cli_here

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny tensors: extra threads only contend on a shared machine
SAMPLERS = ["ddpm", "ddim", "dpm-solver++", "heun"]


@pytest.fixture(scope="module")
def sigma_run(tmp_path_factory) -> Path:
    """8 gaussians, T = 100, learned variance (hybrid loss), 200 steps: seconds, through the API."""
    runs = tmp_path_factory.mktemp("runs")
    return ddpmctl.train(data="8gaussians", name="sigma", runs_dir=runs, learn_sigma=True, steps=200, batch_size=256,
                         network_options={"width": 64, "depth": 2}, schedule_options={"T": 100}, data_options={"n": 2000}).path


def test_bench_quality_writes_a_table_csv_json_and_plot(sigma_run):
    r = cli_here("bench", "quality", sigma_run, "--sampler", ",".join(SAMPLERS), "--steps", "3,10,100", "--n", "64",
            "--clip", "3", env=ONE_THREAD)
    assert_ok(r)
    assert "NFE" in r.stdout and "floor" in r.stdout
    (csv_path,) = (sigma_run / "bench").glob("quality-wasserstein-ddpm+ddim+*-n64-seed0-clip3-*.csv")
    stem = csv_path.with_suffix("")
    assert f"saved {stem}.csv" in r.stdout.replace("\n", "")
    with open(f"{stem}.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["sampler"], int(row["steps"])) for row in rows] == [(s, k) for s in SAMPLERS for k in (3, 10, 100)]
    for row in rows:  # no NaN at any step count, and the NFE each sampler promises
        assert math.isfinite(float(row["w2"])) and float(row["w2"]) > 0 and not row["error"]
        steps, nfe = int(row["steps"]), int(row["nfe"])
        if row["sampler"] == "heun":  # 2N - 1 for N noise levels, fewer levels than steps at most
            assert nfe % 2 == 1 and nfe <= 2 * steps - 1 and (steps > 10 or nfe == 2 * steps - 1)
        else:
            assert nfe == steps
        assert float(row["seconds_per_sample"]) > 0 and 0 <= float(row["clipped_fraction"]) <= 1
    record = json.loads(Path(f"{stem}.json").read_text())
    assert len(record["rows"]) == 12 and record["floors"]["w2"] > 0 and record["clip_x0"] == 3
    assert record["summary"]["reference"]["sampler"] == "ddpm" and record["summary"]["reference"]["steps"] == 100
    assert Path(f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_quality_rejects_more_steps_than_the_model_has(sigma_run):
    assert_clean_error(cli_here("bench", "quality", sigma_run, "--steps", "10,1000", env=ONE_THREAD), "1000", "T = 100")
    assert_clean_error(cli_here("bench", "quality", sigma_run, "--steps", "10", "--reference", "ddpm:1000", env=ONE_THREAD), "--reference", "T = 100")


def test_bench_quality_adds_the_reference_row_only_once(sigma_run):
    r = cli_here("bench", "quality", sigma_run, "--sampler", "ddim", "--steps", "5,10", "--reference", "ddpm:100", "--n", "32",
            "--clip", "2", env=ONE_THREAD)
    assert_ok(r)
    (path,) = (sigma_run / "bench").glob("quality-wasserstein-ddim-n32-seed0-clip2-*.json")
    record = json.loads(path.read_text())
    assert [(row["sampler"], row["steps"]) for row in record["rows"]] == [("ddim", 5), ("ddim", 10), ("ddpm", 100)]
    assert record["summary"]["reference"]["steps"] == 100 and record["summary"]["best_fast"]["sampler"] == "ddim"


def test_benches_that_differ_only_in_steps_or_options_keep_their_own_files(sigma_run):
    """Two benches of one run with the same metric, n and seed but another step grid or sampler
    option each keep their results; the second does not overwrite the first."""
    def bench(*extra):
        r = cli_here("bench", "quality", sigma_run, "--sampler", "ddpm", "--n", "16", "--seed", "7", *extra, env=ONE_THREAD)
        assert_ok(r)
        return {p.name: p.read_bytes() for p in (sigma_run / "bench").glob("quality-*-n16-seed7-*.json")}

    first = bench("--steps", "5")
    second = bench("--steps", "10")
    third = bench("--steps", "10", "-o", "ddpm.variance=beta")
    assert len(first) == 1 and len(second) == 2 and len(third) == 3
    assert all(second[name] == data for name, data in first.items())  # the first bench's record is untouched
    steps = {tuple(r["steps"] for r in json.loads(data)["rows"]) for data in third.values()}
    assert steps == {(5,), (10,)}


def test_interpolate_between_seeds_and_between_real_points(sigma_run):
    from ddpmctl.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["interpolate", str(sigma_run), "--seeds", "3,4", "--frames", "5", "--steps", "20", "--n", "50"])
    assert r.exit_code == 0, r.output
    assert (sigma_run / "interpolate" / "seeds-3-4-20steps.png").stat().st_size > 0
    r = runner.invoke(app, ["interpolate", str(sigma_run), "--images", "0,1", "--frames", "4", "--steps", "20", "--refine", "5"])
    assert r.exit_code == 0, r.output
    assert (sigma_run / "interpolate" / "images-0-1-20steps.png").stat().st_size > 0
    err = float(r.output.split("max |error|")[1].split()[0])
    assert err < 0.05  # inversion then decoding lands back on the real points
