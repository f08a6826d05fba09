"""Settings layers: defaults < TOML < environment < flags; unknown keys are errors."""

import json

import pytest

from ddpmctl.config import TrainSettings, load_settings
from ddpmctl.errors import ConfigError
from tests.conftest import assert_clean_error, assert_ok, cli_here


def test_precedence(tmp_path, monkeypatch):
    toml = tmp_path / "c.toml"
    toml.write_text('steps = 111\nlr = 0.005\nseed = 3\ndata = "moons"\n[network_options]\nwidth = 48\n')
    monkeypatch.setenv("DDPMCTL_LR", "0.007")
    monkeypatch.setenv("DDPMCTL_SEED", "4")
    s = load_settings(TrainSettings, toml, seed=5)
    assert s.data == "moons"  # TOML over default
    assert s.steps == 111  # TOML
    assert s.lr == 0.007  # env over TOML
    assert s.seed == 5  # flag over env
    assert s.network_options == {"width": 48}
    assert s.schedule == "linear"  # default


def test_nested_options_from_env(monkeypatch):
    monkeypatch.setenv("DDPMCTL_NETWORK_OPTIONS__WIDTH", "64")
    assert load_settings(TrainSettings).network_options == {"width": "64"}


def test_an_option_with_capitals_is_reachable_from_env(monkeypatch):
    from ddpmctl import registry

    monkeypatch.setenv("DDPMCTL_SCHEDULE_OPTIONS__T", "500")
    raw = load_settings(TrainSettings).schedule_options
    assert raw == {"t": "500"}  # pydantic-settings lower-cases the key after __
    assert registry.validate_options("schedule", "linear", raw).T == 500
    assert registry.validate_options("schedule", "cosine", {"T": 300}).T == 300


def test_unknown_toml_key_is_an_error(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("stepz = 10\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_settings(TrainSettings, toml)


def test_unknown_env_var_is_an_error(monkeypatch):
    monkeypatch.setenv("DDPMCTL_STEPZ", "10")
    with pytest.raises(ConfigError, match="DDPMCTL_STEPZ"):
        load_settings(TrainSettings)


def test_bad_value_is_one_sentence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("steps = -5\n")
    with pytest.raises(ConfigError, match="steps"):
        load_settings(TrainSettings, toml)


def test_resolved_config_is_printed_and_saved(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('data = "circles"\nsteps = 40\n[network_options]\nwidth = 16\ndepth = 1\n[schedule_options]\nT = 30\n')
    r = cli_here("train", "--config", toml, "--name", "c", "--runs-dir", tmp_path / "runs", "--lr", "0.004",
            env={"DDPMCTL_SEED": "9"})
    assert_ok(r)
    saved = json.loads((tmp_path / "runs" / "c" / "config.json").read_text())["config"]
    assert saved["data"] == "circles" and saved["steps"] == 40 and saved["lr"] == 0.004 and saved["seed"] == 9
    assert saved["network"] == "mlp" and saved["batch_size"] == 512  # phase defaults filled in
    assert "data      circles: " in r.stdout and "training  40 steps, batch 512, lr 0.004" in r.stdout  # a summary;
    assert str(tmp_path / "runs" / "c" / "config.json") in r.stdout and '"seed"' not in r.stdout  # the rest is in config.json


def test_cli_reports_config_errors(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("stepz = 3\n")
    assert_clean_error(cli_here("train", "--config", toml), "stepz")
    assert_clean_error(cli_here("train", "--config", tmp_path / "missing.toml"), "does not exist")
    (tmp_path / "broken.toml").write_text("steps = = 3\n")
    assert_clean_error(cli_here("train", "--config", tmp_path / "broken.toml"), "not valid TOML")
    assert_clean_error(cli_here("train", "--steps", "10", env={"DDPMCTL_STEPZ": "1"}), "DDPMCTL_STEPZ")
