"""`ddpmctl eval --metric kid --metric prdc` on every kind of image run, and `train --eval-every`
logging them: each result carries its floor and protocol; 2-D runs are refused in one sentence.

Inception features are real here (the offline weights), on 8x8 images and n = 24, a few seconds.
The 1-channel run takes Inception features too (`-o kid.features=inception`): `features=auto`
would train the MNIST classifier, whose own path test_metrics_kid_prdc.py covers."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.conftest import assert_clean_error, assert_ok, cli_here, write_images

TINY_IMG = ["--steps", "4", "--batch-size", "8", "-o", "network.channels=8", "-o", "network.channel_mult=[1,2]",
            "-o", "schedule.T=20", "--checkpoint-every", "4"]
EVAL = ["--metric", "kid", "--metric", "prdc", "--n", "24", "--sampler", "ddim", "--steps", "3",
        "-o", "kid.features=inception", "-o", "prdc.features=inception", "-o", "prdc.k=3"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kidprdc")
    write_images(tmp / "rgb", 96)
    for f in sorted((tmp / "rgb").glob("*.png")):
        (tmp / "gray").mkdir(exist_ok=True)
        Image.open(f).convert("L").save(tmp / "gray" / f.name)
    return tmp


def data_args(folders, mode: str) -> list[str]:
    return ["--data", "imagefolder", "-o", f"data.root={folders / mode}", "-o", "data.size=8", "-o", f"data.mode={mode}", "-o", "data.held_out=0.25"]


def saved(run, metric: str) -> dict:
    files = sorted((run / "eval").glob(f"{metric}-*.json"))
    assert files, f"no {metric} result in {run / 'eval'}"
    return json.loads(files[-1].read_text())


@pytest.mark.parametrize("mode", ["rgb", "gray"])
def test_eval_gives_kid_and_prdc_with_floors_on_image_runs(folders, mode, tmp_path):
    env = {"DDPMCTL_DATA_DIR": str(tmp_path / "data")}
    assert_ok(cli_here("train", *data_args(folders, mode), *TINY_IMG, "--name", mode, "--runs-dir", tmp_path / "runs", env=env))
    run = tmp_path / "runs" / mode
    r = cli_here("eval", run, *EVAL, env=env)
    assert_ok(r)
    for key in ("kid", "precision", "recall", "density", "coverage"):
        assert key in r.stdout
    kid, prdc = saved(run, "kid"), saved(run, "prdc")
    assert set(kid["values"]) == set(kid["floor"]) == {"kid", "kid_std"}
    assert set(prdc["values"]) == set(prdc["floor"]) == {"precision", "recall", "density", "coverage"}
    for result in (kid, prdc):
        p = result["protocol"]
        assert (p["n"], p["n_ref"], p["n_floor"], p["features"]) == (24, 24, 24, "inception")
        assert "Inception" in p["feature_network"]
    assert prdc["protocol"]["k"] == 3 and kid["protocol"]["subset_size"] == 24
    assert all(0 <= prdc["floor"][k] <= 1 for k in ("precision", "recall", "coverage"))
    assert prdc["values"] != prdc["floor"]  # four training steps do not make real images


def test_train_eval_every_logs_every_prdc_value(folders, tmp_path):
    env = {"DDPMCTL_DATA_DIR": str(tmp_path / "data")}
    r = cli_here("train", *data_args(folders, "rgb"), *TINY_IMG, "--eval-every", "2", "--eval-metric", "prdc", "--eval-n", "24",
                 "-o", "eval.features=inception", "-o", "eval.k=3", "--name", "watched", "--runs-dir", tmp_path / "runs", env=env)
    assert_ok(r)
    records = [json.loads(line) for line in (tmp_path / "runs" / "watched" / "metrics.jsonl").read_text().splitlines()]
    evals = [rec for rec in records if rec.get("event") == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 4]  # the untrained network first
    for e in evals:
        assert e["metric"] == "prdc" and set(e["values"]) == {"precision", "recall", "density", "coverage"}
        assert set(e["floor"]) == set(e["values"])


@pytest.mark.parametrize("metric", ["kid", "prdc"])
def test_kid_and_prdc_refuse_a_2d_run_in_one_sentence(tiny_run, metric):
    assert_clean_error(cli_here("eval", tiny_run, "--metric", metric, "--n", "50"), "for images", "holds points", "wasserstein")
    assert not (tiny_run / "eval").exists() or not list((tiny_run / "eval").glob(f"{metric}-*.json"))
