"""The face of the command line: help that starts without torch and reads at 80 columns, `-h`,
shell completion, `--json` results that parse, plugin options in words, train's summary,
progress without a terminal, and Ctrl-C in `sample` and `eval`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import typing
from pathlib import Path
from typing import Optional

import pytest
import typer.main

from ddpmctl.cli import COMMANDS, app
from ddpmctl.cli.face import first_line
from ddpmctl.cli.plugins import type_words
from ddpmctl.cli.render import Rich
from tests.conftest import REPO, assert_ok, cli_here

HEAVY = ("torch", "ddpmctl.networks", "ddpmctl.samplers", "ddpmctl.datasets", "ddpmctl.metrics", "ddpmctl.api")

# Runs the CLI once per argv given on the command line (as JSON), then says which heavy modules it imported.
PROBE = """
import json, sys
from ddpmctl.cli import main
for argv in json.loads(sys.argv[1]):
    sys.argv = ["ddpmctl", *argv]
    try:
        main()
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(tuple(sys.argv[2].split(","))))
print("HEAVY:" + json.dumps(heavy))
"""


def probe(argvs: list[list[str]]) -> tuple[list[str], str]:
    """(heavy modules imported, stdout) after running each argv in one fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs), ",".join(HEAVY[1:])], capture_output=True, text=True,
                       env={**env, "COLUMNS": "100"}, cwd=REPO, timeout=120)
    assert r.returncode == 0 and "HEAVY:" in r.stdout, r.stdout + r.stderr
    out, _, heavy = r.stdout.rpartition("HEAVY:")
    return json.loads(heavy), out


def every_command() -> list[list[str]]:
    """The path of every command and group: ["train"], ["bench"], ["bench", "quality"], ..."""
    root = typer.main.get_command(app)
    paths = []
    for name, cmd in root.commands.items():
        paths.append([name])
        paths += [[name, sub] for sub in getattr(cmd.load(), "commands", {}) or {}]
    return paths


def test_help_version_and_every_commands_help_start_without_torch():
    heavy, out = probe([["--help"], ["--version"], ["train", "--help"]])
    assert not heavy, f"--help, --version and train --help imported {heavy}"
    assert "Commands" in out and "ddpmctl 0.1.0" in out and "--batch-size" in out
    heavy, out = probe([[*path, "--help"] for path in every_command()])
    assert not heavy, f"a command's --help imported {heavy}"
    assert out.count("Usage: ddpmctl") == len(every_command())


def test_every_command_module_imports_without_torch():
    modules = sorted({target.partition(":")[0] for target, _ in COMMANDS.values()} | {"ddpmctl.cli.common", "ddpmctl.cli.render"})
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_root_lists_each_command_by_the_first_paragraph_of_its_help():
    """The table in ddpmctl/cli/__init__.py stays what each command says of itself."""
    root = typer.main.get_command(app)
    for name, (_, line) in COMMANDS.items():
        assert line == first_line(root.commands[name].load()), name


def test_sweep_help_names_the_default_evaluation_interval():
    from ddpmctl import sweeps

    r = cli_here("sweep", "--help")
    assert f"default {sweeps.DEFAULT_EVAL_EVERY};" in " ".join(r.stdout.replace("│", " ").split())


@pytest.mark.parametrize("path", [[], ["train"], ["bench", "quality"], ["plugins"]])
def test_h_is_help(path):
    long, short = cli_here(*path, "--help"), cli_here(*path, "-h")
    assert_ok(long)
    assert short.returncode == 0 and short.stdout == long.stdout and "Usage: ddpmctl" in long.stdout


def right_column(panel: list[str]) -> tuple[str, int]:
    """The help column of a two-column help panel, its lines joined, and its width: the left
    column ends where continuation lines (blank on the left) start their text."""
    inner = [line.strip()[1:-1] for line in panel]  # inside the box's │ ... │
    start = min(len(s) - len(s.lstrip()) for s in inner if s.strip() and s.startswith("  "))
    return " ".join(s[start:].strip() for s in inner), len(inner[0]) - start


def test_help_at_80_columns_shows_every_option_in_full():
    r = cli_here("train", "--help", env={"COLUMNS": "80"})
    assert_ok(r)
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "<bool>" not in r.stdout and "…" not in r.stdout
    top = next(i for i, line in enumerate(lines) if line.startswith("╭─ Options"))
    bottom = next(i for i in range(top, len(lines)) if lines[i].startswith("╰"))
    panel = lines[top + 1:bottom]
    helps, width = right_column(panel)
    helps = " ".join(helps.split())
    train = typer.main.get_command(app).commands["train"].load()
    for param in train.params:
        assert " ".join(param.help.split()) in helps, param.name
    assert width >= 45, f"the help column is {width} characters wide"  # the names take at most a third
    assert "--learn-sigma /" in r.stdout and "--no-learn-sigma" in r.stdout


@pytest.mark.parametrize("words, offered", [("ddpmctl tr", "train"), ("ddpmctl bench q", "quality"), ("ddpmctl sample --sa", "--sampler")])
def test_bash_completion_offers_commands_and_options(words, offered):
    env = {**os.environ, "_DDPMCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    r = subprocess.run([sys.executable, "-m", "ddpmctl"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and offered in r.stdout.split(), r.stdout + r.stderr


def test_zsh_completion_and_the_scripts_to_install():
    def run(**env) -> str:
        r = subprocess.run([sys.executable, "-m", "ddpmctl"], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    offered = run(_DDPMCTL_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="ddpmctl pl")
    assert '"plugins"' in offered and '"plot"' in offered and '"train"' not in offered
    assert "complete -o default -F _ddpmctl_completion ddpmctl" in run(_DDPMCTL_COMPLETE="source_bash")
    assert "compdef _ddpmctl_completion ddpmctl" in run(_DDPMCTL_COMPLETE="source_zsh")


def test_bash_completes_through_the_installed_script():
    """What a bash user gets: the script sourced, the console script called by it."""
    script = Path(sys.executable).parent / "ddpmctl"
    if not script.is_file() or shutil.which("bash") is None:
        pytest.skip("needs bash and the ddpmctl console script beside this Python")
    line = ('source <(_DDPMCTL_COMPLETE=source_bash ddpmctl); COMP_WORDS=(ddpmctl bench q); COMP_CWORD=2; '
            '_ddpmctl_completion ddpmctl; echo "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["quality"], r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# Plugin options in words


def test_type_words():
    assert type_words(typing.Literal["a", "b"]) == "one of: a, b"
    assert type_words(Optional[int]) == "int or none"
    assert type_words(float | None) == "float or none"
    assert type_words(list[float] | None) == "list of float or none"
    assert type_words(tuple[int, ...]) == "tuple of int"
    assert type_words(typing.Union[int, str, list[int], None]) == "int or str or list of int or none"
    assert type_words(tuple[typing.Annotated[int, "positive"], ...]) == "tuple of int"
    assert type_words(Path) == "Path"


def test_plugins_show_says_required_and_the_allowed_values():
    r = cli_here("plugins", "show", "imagefolder")
    assert_ok(r)
    assert "PydanticUndefined" not in r.stdout and "Literal" not in r.stdout
    root = next(line for line in r.stdout.splitlines() if line.startswith("│ root"))
    assert "required" in root
    assert "one of: rgb, gray" in r.stdout
    r = cli_here("plugins", "show", "unet")
    assert "int or none" in r.stdout and "Optional" not in r.stdout


# ---------------------------------------------------------------------------------------------
# --json


def stdout_json(*args) -> dict:
    r = cli_here(*args, "--json")
    assert_ok(r)
    return json.loads(r.stdout)


def test_plugins_list_and_show_json():
    listed = stdout_json("plugins", "list")["plugins"]
    assert {"kind": "sampler", "name": "ddim"}.items() <= next(p for p in listed if p["name"] == "ddim").items()
    assert all(p["ok"] for p in listed if p["distribution"] == "ddpmctl")
    (shown,) = stdout_json("plugins", "show", "imagefolder")["plugins"]
    options = {o["name"]: o for o in shown["options"]}
    assert options["root"]["required"] and options["root"]["default"] is None
    assert options["mode"] == {**options["mode"], "type": "one of: rgb, gray", "default": "rgb", "required": False}


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the tiny 2-D run, for commands that write into it."""
    return Path(shutil.copytree(tiny_run, tmp_path / "tiny"))


def test_eval_bench_and_compare_json(run):
    doc = stdout_json("eval", run, "--n", "300", "--steps", "10", "--sampler", "ddim")
    assert doc["n"] == 300 and doc["sampling"]["sampler"] == "ddim" and doc["metrics"]["wasserstein"]["values"]["w2"] > 0
    assert Path(doc["metrics"]["wasserstein"]["path"]).is_file()
    doc = stdout_json("bench", "quality", run, "--sampler", "ddim,dpm-solver++", "--steps", "2,5", "--n", "200", "--reference", "ddim:5")
    assert [(r["sampler"], r["steps"]) for r in doc["rows"]] == [("ddim", 2), ("ddim", 5), ("dpm-solver++", 2), ("dpm-solver++", 5)]
    assert all(Path(f).is_file() for f in doc["files"]) and doc["floors"]
    doc = stdout_json("compare", run, "--quality", "loss<=5")
    assert doc["runs"][0]["run"] == "tiny" and doc["runs"][0]["reached"] is not None and Path(doc["plot"]).is_file()


def test_bench_speed_json():
    doc = stdout_json("bench", "speed", "--model", "2d", "--nfe", "1", "--train-steps", "1", "--repeats", "1", "--batch-size", "8")
    (result,) = doc["results"]
    assert result["model"] == "2d" and result["sides"]["ddpmctl"]["parameters"] > 0 and doc["environment"]


# ---------------------------------------------------------------------------------------------
# Progress without a terminal, and Ctrl-C


def test_sample_without_a_terminal_writes_progress_lines_to_stderr(run, monkeypatch):
    r = cli_here("sample", run, "--n", "500", "--steps", "10", "--sampler", "ddim")
    assert_ok(r)
    assert r.stderr == ""  # a quick job: no lines
    monkeypatch.setattr(Rich, "QUIET_S", 0.0)
    r = cli_here("sample", run, "--n", "500", "--steps", "10", "--sampler", "ddim", "--batch-size", "50")
    assert_ok(r)
    lines = r.stderr.splitlines()
    assert all(line.startswith("sampling 500 with ddim: ") for line in lines) and 2 <= len(lines) <= 10, r.stderr
    assert lines[-1].endswith("500/500 (100%)") and "%" not in r.stdout


@pytest.mark.parametrize("command, said", [("sample", "sampling stopped before any file was written"),
                                           ("eval", "the evaluation stopped before any result was saved")])
def test_ctrl_c_in_sample_and_eval_is_one_line_and_exit_130(run, command, said):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    p = subprocess.Popen([sys.executable, "-m", "ddpmctl", command, str(run), "--n", "400000", "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    first = p.stderr.readline()  # the first progress line: sampling has started
    assert re.match(r"sampling 400000 with \S+: \d+/400000 \(\d+%\)$", first), first + p.communicate()[1]
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, out + err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"interrupted: {said}; run the command again to {'sample' if command == 'sample' else 'evaluate'}."], err
    assert not (run / "samples").exists() and not (run / "eval").exists()
