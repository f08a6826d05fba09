"""Shared fixtures: running the CLI as a user does, and a tiny trained 2-D run."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# In-process tests do tiny tensor work, where extra threads only spin (and CI shares 2 cores).
torch.set_num_threads(1)
if os.environ.get("PYTEST_XDIST_WORKER"):  # tests run two at a time (pytest -n 2): the CLIs they start take one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A small model and a short schedule: trains in seconds, still a real diffusion model. As flags,
# and as the settings of the Python API (ddpmctl.train).
TINY_SETTINGS = dict(steps=300, network_options={"width": 32, "depth": 2}, schedule_options={"T": 100}, data_options={"n": 5000},
                     batch_size=256, checkpoint_every=100)
TINY = ["--steps", "300", "-o", "network.width=32", "-o", "network.depth=2", "-o", "schedule.T=100",
        "-o", "data.n=5000", "--batch-size", "256", "--checkpoint-every", "100"]


def on_pythonpath(*paths: Path) -> dict:
    """An environment that puts ``paths`` first on PYTHONPATH and keeps what was there (where the
    dependencies themselves come from PYTHONPATH, replacing it would lose them)."""
    return {"PYTHONPATH": os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])])}


def cli(*args, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `ddpmctl ARGS` in a fresh process, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    full_env.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ddpmctl", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
    )


def cli_here(*args, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`cli`, run in this process (seconds faster: no interpreter start, no torch import): the
    same argv, environment, working directory and console width; the process's environment,
    directory, arguments and torch threads are put back afterwards. For commands that do not
    depend on what a fresh process would install (plugins on PYTHONPATH, signals, torchrun)."""
    from ddpmctl.cli import main
    from ddpmctl.cli.common import console, err_console

    saved = (dict(os.environ), list(sys.argv), os.getcwd(), torch.get_num_threads(), console.width, err_console.width)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        for k in [k for k in os.environ if k.startswith("DDPMCTL_")]:
            del os.environ[k]
        os.environ.update({"COLUMNS": "200", **(env or {})})
        for c in (console, err_console):  # rich reads COLUMNS once, when the console is made
            c.width = 200
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = ["ddpmctl", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        env_before, sys.argv, cwd_before, threads, width, err_width = saved
        os.environ.clear()
        os.environ.update(env_before)
        os.chdir(cwd_before)
        torch.set_num_threads(threads)
        console.width, err_console.width, console.quiet = width, err_width, False
    return subprocess.CompletedProcess(["ddpmctl", *map(str, args)], code, out.getvalue(), err.getvalue())


def run_in_process(args: list, env: dict[str, str], monkeypatch, capsys, columns: int = 200) -> tuple[int, str, str]:
    """Run `ddpmctl ARGS` in this process, as the console script does (seconds faster than
    `cli` where many commands run); returns (exit code, stdout, stderr)."""
    from ddpmctl.cli import main
    from ddpmctl.cli.common import console, err_console

    with monkeypatch.context() as m:
        for k in [k for k in os.environ if k.startswith("DDPMCTL_")]:
            m.delenv(k)
        m.setenv("COLUMNS", str(columns))
        for c in (console, err_console):  # rich reads COLUMNS once, when the console is made
            m.setattr(c, "width", columns)
        for k, v in env.items():
            m.setenv(k, v)
        m.setattr(sys, "argv", ["ddpmctl", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_in_process(args: list, env: dict[str, str], monkeypatch, capsys) -> tuple[int, str]:
    """`run_in_process`, with stdout and stderr together."""
    code, out, err = run_in_process(args, env, monkeypatch, capsys)
    return code, out + err


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: non-zero exit, no traceback, one line on stderr naming the problem."""
    out = result.stdout + result.stderr
    assert result.returncode != 0, f"expected failure, got exit 0:\n{out}"
    assert "Traceback" not in out, out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    msg = lines[0]
    for fragment in fragments:
        assert fragment.lower() in msg.lower(), f"{fragment!r} not in {msg!r}"
    return msg


def write_images(folder: Path, n: int, size: int = 8, seed: int = 0) -> None:
    """n small RGB PNGs: a coloured square on a plain background, different in each image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        a, b = sorted(rng.integers(0, size, 2))
        img[a : b + 1, a : b + 1] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / f"img{i:03d}.png")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A 2-D run trained for 300 steps on 8 gaussians (session-wide; treat as read-only)."""
    import ddpmctl

    runs = tmp_path_factory.mktemp("runs")
    return ddpmctl.train(data="8gaussians", name="tiny", runs_dir=runs, **TINY_SETTINGS).path


MNIST_FILES = SHARED_DATA / "mnist"


def need_mnist() -> None:
    if not (MNIST_FILES / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the original MNIST files are not at {MNIST_FILES} (shared/data/mnist beside the repository)")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """A data directory with MNIST imported through `ddpmctl data fetch mnist --from DIR`."""
    need_mnist()
    root = tmp_path_factory.mktemp("data")
    r = cli("data", "fetch", "mnist", "--from", MNIST_FILES, env={"DDPMCTL_DATA_DIR": str(root), "OMP_NUM_THREADS": "1"})
    assert_ok(r)
    assert "MD5" in r.stdout
    return root
