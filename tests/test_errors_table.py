"""Bad input everywhere: each case exits non-zero with one sentence and no traceback.

The cases and their messages make the table in docs/errors.md; this test fails when the table
is out of date. Regenerate it with:  UPDATE_DOCS=1 pytest tests/test_errors_table.py
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch

from ddpmctl import registry
from tests.conftest import REPO, run_in_process

DOC = REPO / "docs" / "errors.md"


def run(args: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `ddpmctl ARGS` in this process, wide enough that Typer's boxes do not wrap."""
    return run_in_process(args, env, monkeypatch, capsys, columns=300)


def message(err: str) -> str:
    """The sentence shown: our one red line, or the text inside Typer's usage-error box."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("error:")]
    if ours:
        return ours[0][len("error:"):].strip()
    boxed = [line.strip("│ ").strip() for line in lines if line.startswith("│")]
    return " ".join(boxed)


@pytest.fixture(scope="module")
def places(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    (root / "empty").mkdir()
    (root / "bad.toml").write_text("stepz = 3\n")
    (root / "broken.toml").write_text("steps = = 3\n")
    (root / "notes.txt").write_text("not samples\n")
    (root / "not-a-run").mkdir()
    damaged = root / "damaged"
    shutil.copytree(tiny_run, damaged)
    for ckpt in (damaged / "checkpoints").glob("*.safetensors"):
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    import ddpmctl
    from tests.conftest import TINY_SETTINGS

    distilled = ddpmctl.distill(tiny_run, "consistency", name="distilled", runs_dir=root, steps=2, checkpoint_every=2).path
    other = ddpmctl.train(data="moons", name="moons", runs_dir=root, **{**TINY_SETTINGS, "steps": 2, "checkpoint_every": 2}).path
    return {"tmp": root, "run": tiny_run, "damaged": damaged, "distilled": distilled, "other": other}


def cases(p: dict) -> list[tuple[str, list[str], dict]]:
    t, run = p["tmp"], str(p["run"])
    empty_data = {"DDPMCTL_DATA_DIR": str(t / "empty")}
    return [
        ("unknown dataset", ["train", "--data", "spirall"], {}),
        ("unknown network", ["train", "--network", "transformer"], {}),
        ("unknown schedule", ["train", "--schedule", "quadratic2"], {}),
        ("unknown prediction", ["train", "--prediction", "score"], {}),
        ("out-of-range plugin option", ["train", "-o", "network.width=-3"], {}),
        ("wrongly typed plugin option", ["train", "-o", "data.noise=loud"], {}),
        ("unknown plugin option", ["train", "-o", "data.nosie=0.1"], {}),
        ("option without a kind", ["train", "-o", "width=3"], {}),
        ("out-of-range setting", ["train", "--steps", "0"], {}),
        ("negative learning rate", ["train", "--lr", "-1"], {}),
        ("missing config file", ["train", "--config", str(t / "missing.toml")], {}),
        ("unknown key in config file", ["train", "--config", str(t / "bad.toml")], {}),
        ("config file that is not TOML", ["train", "--config", str(t / "broken.toml")], {}),
        ("unknown environment variable", ["train"], {"DDPMCTL_STEPZ": "3"}),
        ("class conditioning on data without labels", ["train", "--data", "swissroll", "--cond", "class"], {}),
        ("CUDA asked for, none present", ["train", "--device", "cuda"], {"CUDA_VISIBLE_DEVICES": ""}),
        ("unknown device", ["train", "--device", "tpu"], {}),
        ("digit outside 0-9", ["train", "--data", "mnist16", "--digits", "12"], empty_data),
        ("MNIST not downloaded", ["train", "--data", "mnist16", "--digits", "0"], empty_data),
        ("empty image folder", ["train", "--data", "imagefolder", "-o", f"data.root={t / 'empty'}"], {}),
        ("image folder that does not exist", ["train", "--data", "imagefolder", "-o", f"data.root={t / 'nowhere'}"], {}),
        ("resume with a different network", ["train", "--resume", run, "-o", "network.width=64"], {}),
        ("resume with a different dataset", ["train", "--resume", run, "--data", "spiral"], {}),
        ("resume a finished run", ["train", "--resume", run], {}),
        ("resume a missing run", ["train", "--resume", str(t / "nope")], {}),
        ("sample a missing run", ["sample", str(t / "nope")], {}),
        ("sample a folder that is not a run", ["sample", str(t / "not-a-run")], {}),
        ("sample with only damaged checkpoints", ["sample", str(p["damaged"])], {}),
        ("unknown sampler", ["sample", run, "--sampler", "euler"], {}),
        ("invalid sampler option", ["sample", run, "-o", "variance=huge"], {}),
        ("more steps than the model has", ["sample", run, "--steps", "5000"], {}),
        ("--class on an unconditional model", ["sample", run, "--class", "3"], {}),
        ("zero samples", ["sample", run, "--n", "0"], {}),
        ("unknown metric", ["eval", run, "--metric", "fidd"], {}),
        ("samples file that does not exist", ["eval", run, "--samples", str(t / "none.npz")], {}),
        ("samples file that is not one", ["eval", run, "--samples", str(t / "notes.txt")], {}),
        ("show an unknown dataset", ["data", "show", "spirall"], {}),
        ("fetch from a folder without the files", ["data", "fetch", "mnist", "--from", str(t / "empty")], empty_data),
        ("show an unknown plugin", ["plugins", "show", "nothing"], {}),
        ("list an unknown plugin kind", ["plugins", "list", "--kind", "widgets"], {}),
        ("bench with an unknown sampler", ["bench", "quality", run, "--sampler", "nope", "--steps", "5"], {}),
        ("interpolate a missing run", ["interpolate", str(t / "nope")], {}),
        ("--until-metric without a comparison", ["train", "--until-metric", "wasserstein=0.1"], {}),
        ("--max-time that is not a duration", ["train", "--max-time", "15x"], {}),
        ("--until-metric without evaluations", ["train", "--until-metric", "w2<=0.1", "--eval-every", "0"], {}),
        ("--until-metric naming another metric than --eval-metric", ["train", "--until-metric", "fid<=3", "--eval-metric", "wasserstein"], {}),
        ("--until-metric on a value the metric lacks", ["train", "--data", "8gaussians", "-o", "data.n=500", "--eval-every", "10", "--eval-n", "50",
                                                         "--until-metric", "w3<=0.1", "--runs-dir", str(t / "never")], {}),
        ("--eval-metric for images on 2-D data", ["train", "--data", "8gaussians", "-o", "data.n=500", "--eval-every", "10", "--eval-n", "50",
                                                  "--eval-metric", "classifier-fid", "--runs-dir", str(t / "never")], {}),
        ("--per-class on an unconditional model", ["sample", run, "--per-class", "10"], {}),
        ("--export into a folder that is not empty", ["sample", run, "--export", str(t)], {}),
        ("--export of a 2-D model", ["sample", run, "--export", str(t / "new-folder")], {}),
        ("cas on 2-D samples", ["eval", run, "--metric", "cas", "--n", "50"], {}),
        ("eval a folder that is not an export", ["eval", run, "--samples", str(t / "empty")], {}),
        ("compare with a malformed --quality", ["compare", run, "--quality", "w2=0.1"], {}),
        ("compare on a quality no run measured", ["compare", run, "--quality", "fid<=3"], {}),
        ("compare a missing run", ["compare", run, str(t / "nope")], {}),
        ("distill a missing run", ["distill", str(t / "nope"), "--method", "consistency"], {}),
        ("distill without a method", ["distill", run], {}),
        ("distill with an unknown method", ["distill", run, "--method", "sharpen", "--runs-dir", str(t / "never")], {}),
        ("meanflow from a ddpm run", ["distill", run, "--method", "meanflow", "--runs-dir", str(t / "never")], {}),
        ("a teacher-calling method without a teacher", ["train", "--method", "consistency", "-o", "method.target=teacher", "--runs-dir", str(t / "never")], {}),
        ("distill a run that is itself distilled", ["distill", str(p["distilled"]), "--method", "consistency", "--runs-dir", str(t / "never")], {}),
        ("DDIM inversion of a few-step model", ["interpolate", str(p["distilled"]), "--images", "0,1"], {}),
        ("--with a run of other data", ["bench", "quality", run, "--with", str(p["other"]), "--steps", "5"], {}),
    ]


def test_every_bad_input_gets_one_sentence(places, monkeypatch, capsys):
    registry.clear_cache()
    rows = []
    for what, args, env in cases(places):
        with monkeypatch.context() as m:
            if env.get("CUDA_VISIBLE_DEVICES") == "":  # this process may have started CUDA already, which the variable no longer hides
                m.setattr(torch.cuda, "is_available", lambda: False)
            code, out, err = run(args, env, monkeypatch, capsys)
        shown = out + err
        assert code != 0, f"{what}: exit 0\n{shown}"
        assert "Traceback" not in shown, f"{what}:\n{shown}"
        msg = message(err)
        assert msg, f"{what}: no message\n{shown}"
        assert len([line for line in err.splitlines() if line.startswith("error:")]) <= 1, f"{what}:\n{err}"
        shown_args = " ".join(a if " " not in a else f'"{a}"' for a in args)
        rows.append((what, _normalise(shown_args, places), code, _normalise(msg, places)))
    assert len(rows) >= 30

    table = render(rows)
    if os.environ.get("UPDATE_DOCS"):
        DOC.write_text(table)
    assert DOC.read_text() == table, "docs/errors.md is out of date: run UPDATE_DOCS=1 pytest tests/test_errors_table.py"


def _normalise(text: str, places: dict) -> str:
    text = text.replace(str(places["damaged"]), "runs/damaged").replace(str(places["run"]), "runs/tiny")
    text = text.replace(str(places["tmp"]), "/tmp/x")
    text = re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s]+", "/tmp/x", text)
    return text.replace("|", "\\|")


def render(rows) -> str:
    lines = [
        "# What ddpmctl says when the input is wrong",
        "",
        "Generated by `tests/test_errors_table.py` (regenerate: `UPDATE_DOCS=1 pytest tests/test_errors_table.py`).",
        "Every row exits non-zero with one sentence and no traceback (`--debug` shows the traceback).",
        "Exit code 2 is a usage error found by the command-line parser; 1 is anything found later.",
        "`runs/tiny` is a small trained 2-D run; `/tmp/x` a scratch folder.",
        "",
        "| # | bad input | command | exit | message |",
        "|---|---|---|---|---|",
    ]
    for i, (what, args, code, msg) in enumerate(rows, 1):
        lines.append(f"| {i} | {what} | `ddpmctl {args}` | {code} | {msg} |")
    return "\n".join(lines) + "\n"
