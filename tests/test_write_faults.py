"""Every writing command, its disk filling up or its folder turning read-only part-way: one
sentence, a non-zero exit, no traceback, and the files that were there before intact (no
temporary files, no empty ones); and output paths that cannot be written are refused before
the work starts. The CLI runs in this process so that the faults can be injected: os.write
raises ENOSPC (a full disk), or os.open / os.mkdir / os.replace raise EROFS (a read-only
folder; chmod would not stop root), on paths under the test's folder, once the command has
made ``after`` writes there."""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ddpmctl.run import LOCK
from tests.conftest import assert_clean_error, assert_ok, cli_here, write_images

ENV = {"OMP_NUM_THREADS": "1"}


@dataclass
class Faults:
    """OS calls that fail on paths under ``root`` once ``after`` os.write calls there succeeded."""

    root: Path
    error: int  # ENOSPC: os.write fails; EROFS: opening for writing, making folders and renaming fail
    after: int
    writes: int = 0
    raised: int = 0

    def _under(self, path) -> bool:
        try:
            return str(Path(path).absolute()).startswith(str(self.root))
        except (TypeError, ValueError):
            return False

    def _fail(self) -> None:
        self.raised += 1
        raise OSError(self.error, os.strerror(self.error))

    def install(self, monkeypatch) -> None:
        real_write, real_open, real_mkdir, real_replace = os.write, os.open, os.mkdir, os.replace

        def write(fd, data):
            if self._under(os.readlink(f"/proc/self/fd/{fd}")):
                if self.error == errno.ENOSPC and self.writes >= self.after:
                    self._fail()
                self.writes += 1
            return real_write(fd, data)

        def armed(path) -> bool:
            return self.error == errno.EROFS and self.writes >= self.after and self._under(path)

        def open_(path, flags, mode=0o777, *, dir_fd=None):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and armed(path):
                self._fail()
            return real_open(path, flags, mode, dir_fd=dir_fd)

        def mkdir(path, mode=0o777, *, dir_fd=None):
            if armed(path):
                self._fail()
            return real_mkdir(path, mode, dir_fd=dir_fd)

        def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            if armed(dst):
                self._fail()
            return real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "replace", replace)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_intact(root: Path, before: dict[str, bytes], appended: tuple[str, ...] = (), rewritten: tuple[str, ...] = ()) -> None:
    """Every file of ``before`` is still there with its bytes (a log of ``appended`` may have
    grown; a JSON file ``rewritten`` on purpose is whole); no temporary file is left and no file
    is empty (filelock's own lock file aside)."""
    after = snapshot(root)
    for name, data in before.items():
        assert name in after, f"{name} was removed"
        if Path(name).name in appended:
            assert after[name].startswith(data), f"{name} lost records"
        elif Path(name).name in rewritten:
            json.loads(after[name])
        elif Path(name).name != LOCK:
            assert after[name] == data, f"{name} was changed"
    assert not [n for n in after if Path(n).name.endswith(".tmp")], f"temporary files left: {list(after)}"
    assert not [n for n, d in after.items() if not d and Path(n).name != LOCK], "empty files left"


FAULTS = {"full disk": errno.ENOSPC, "read-only folder": errno.EROFS}
STRERROR = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system"}


def fails_cleanly(args: list, root: Path, fault: int, after: int, monkeypatch, env: dict | None = None) -> str:
    """Run `ddpmctl ARGS` with the fault injected under ``root``; its one sentence."""
    faults = Faults(root.absolute(), fault, after)
    with monkeypatch.context() as m:
        faults.install(m)
        r = cli_here(*args, env={**ENV, **(env or {})})
    assert faults.raised, f"no write was made to fail (after {faults.writes} writes): {r.stdout}{r.stderr}"
    msg = clean_error(r, STRERROR[fault])
    assert "could not write" in msg or "cannot" in msg, msg
    return msg


def clean_error(r, *fragments: str) -> str:
    """A non-zero exit, no traceback, and one error line (progress lines may go to stderr too):
    one sentence holding ``fragments``."""
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    msg = errors[0]
    assert msg.endswith(".") and msg.count(". ") == 0, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the session's tiny 2-D run (300 steps, checkpoints every 100), with samples and an evaluation."""
    dest = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns(".lock*"))
    return dest


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_train_resume(run, fault, monkeypatch):
    before = snapshot(run)
    # pid file, metrics.jsonl cut back, config.json, one record: then the fault, mid-training
    fails_cleanly(["train", "--resume", run, "--steps", "400"], run, fault, 4, monkeypatch, env={"DDPMCTL_LOG_EVERY": "10"})
    check_intact(run, before, appended=("metrics.jsonl",), rewritten=("config.json",))  # config.json: the new steps
    assert not (run / ".lock.pid").exists()  # the lock was let go
    r = cli_here("train", "--resume", run, "--steps", "400", env=ENV)  # the run goes on once the disk has room
    assert_ok(r)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 400


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_train_new_run_and_distill(run, fault, monkeypatch):
    before = snapshot(run.parent)
    fails_cleanly(["train", "--data", "8gaussians", "--steps", "20", "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=50",
                   "--checkpoint-every", "10", "--name", "new", "--runs-dir", run.parent], run.parent, fault, 3, monkeypatch,
                  env={"DDPMCTL_LOG_EVERY": "5"})
    fails_cleanly(["distill", run, "--method", "consistency", "--steps", "20", "--name", "few"], run.parent, fault, 2, monkeypatch)
    check_intact(run.parent, before)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_sample_keeps_the_previous_samples_file(run, fault, monkeypatch, tmp_path):
    args = ["sample", run, "--n", "100", "--sampler", "ddim", "--steps", "5"]
    assert_ok(cli_here(*args, env=ENV))
    before = snapshot(run)
    fails_cleanly(args, run, fault, 0, monkeypatch)  # the same file again: the first write fails
    fails_cleanly([*args, "--trajectory"], run, fault, 2, monkeypatch)  # the .npz and the plot made, then the trajectory fails
    check_intact(run, {k: v for k, v in before.items()})
    assert snapshot(run)["samples/ddim-5steps-seed0.npz"] == before["samples/ddim-5steps-seed0.npz"]


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_eval_plot_and_compare_keep_their_previous_results(run, fault, monkeypatch, tmp_path):
    evaluate = ["eval", run, "--n", "100", "--sampler", "ddim", "--steps", "5"]
    compare = ["compare", run, run.parent.parent / "other" / "tiny", "--out", tmp_path / "cmp" / "c.png"]
    shutil.copytree(run, run.parent.parent / "other" / "tiny")
    for args in (evaluate, ["plot", run], compare):
        assert_ok(cli_here(*args, env=ENV))
    before = snapshot(tmp_path)
    for args, after in ((evaluate, 0), (["plot", run], 0), (compare, 1)):
        fails_cleanly(args, tmp_path, fault, after, monkeypatch)
    check_intact(tmp_path, before)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_bench_interpolate_and_data_show_keep_their_previous_outputs(run, fault, monkeypatch, tmp_path):
    out = tmp_path / "out"
    commands = [
        (["bench", "quality", run, "--sampler", "ddim", "--steps", "2,5", "--n", "100"], 0),
        (["bench", "speed", "--model", "2d", "--nfe", "2", "--train-steps", "1", "--repeats", "1", "--batch-size", "8", "--out", out / "speed.json"], 0),
        (["interpolate", run, "--steps", "5", "--n", "20", "--out", out / "paths.png"], 0),
        (["data", "show", "spiral", "--n", "200", "--out", out / "spiral.png"], 0),
    ]
    for args, _ in commands:
        assert_ok(cli_here(*args, env=ENV))
    before = snapshot(tmp_path)
    for args, after in commands:
        fails_cleanly(args, tmp_path, fault, after, monkeypatch)
    check_intact(tmp_path, before)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_export_and_data_fetch_leave_no_half_folder(run, fault, monkeypatch, tmp_path):
    write_images(tmp_path / "emoji", 6, size=32)
    data = tmp_path / "data"
    assert_ok(cli_here("data", "fetch", "emoji32", "--from", tmp_path / "emoji", env={**ENV, "DDPMCTL_DATA_DIR": str(data)}))
    image_run = tmp_path / "runs" / "img"
    r = cli_here("train", "--data", "emoji32", "--steps", "2", "--batch-size", "4", "-o", "network.channels=8", "-o", "network.channel_mult=[1]",
                 "-o", "schedule.T=10", "--name", "img", "--runs-dir", image_run.parent, "--threads", "1",
                 env={**ENV, "DDPMCTL_DATA_DIR": str(data), "DDPMCTL_SAMPLE_EVERY": "0"})
    assert_ok(r)
    before = snapshot(tmp_path)
    fails_cleanly(["sample", image_run, "--n", "6", "--steps", "2", "--export", tmp_path / "export"], tmp_path, fault, 4, monkeypatch,
                  env={"DDPMCTL_DATA_DIR": str(data)})
    assert not (tmp_path / "export").exists()  # the half-written export was taken away
    write_images(tmp_path / "emoji2", 6, size=32, seed=1)
    fails_cleanly(["data", "fetch", "emoji32", "--from", tmp_path / "emoji2"], tmp_path, fault, 2, monkeypatch, env={"DDPMCTL_DATA_DIR": str(data)})
    check_intact(tmp_path, before, appended=("metrics.jsonl",))


def test_a_sweep_that_cannot_write_leaves_nothing(tmp_path, monkeypatch):
    args = ["sweep", "--name", "s", "--runs-dir", tmp_path / "runs", "--data", "8gaussians", "--steps", "10", "--grid", "lr=1e-3,3e-3"]
    fails_cleanly(args, tmp_path, errno.ENOSPC, 0, monkeypatch)
    check_intact(tmp_path, {})


# -- output paths checked before the work starts ----------------------------------------------


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "file.txt"
    f.write_text("keep")
    return f


def test_output_paths_are_checked_before_the_work(run, tmp_path, a_file, monkeypatch):
    cases = [
        (["sample", run, "--n", "10", "--grid", tmp_path], "--grid", "is a folder"),
        (["sample", run, "--n", "10", "--grid", tmp_path / "g.xyz"], "--grid", "not an image format"),
        (["sample", run, "--n", "10", "--grid", a_file / "g.png"], f"--grid {a_file / 'g.png'} cannot be written, because {a_file} is a file"),
        (["sample", run, "--n", "10", "--out", a_file], "--out", "is a file, not a folder"),
        (["sample", run, "--n", "10", "--export", a_file], "--export", "is a file"),
        (["interpolate", run, "--out", tmp_path / "x.bmpx"], "--out", "not an image format"),
        (["compare", run, run, "--out", tmp_path], "--out", "is a folder"),
        (["data", "show", "spiral", "--out", tmp_path / "spiral"], "--out", "no extension"),
        (["train", "--data", "spiral", "--steps", "5", "--runs-dir", a_file], "--runs-dir", "is a file"),
        (["train", "--data", "spiral", "--steps", "5", "--runs-dir", a_file / "sub"], "--runs-dir", "because"),
        (["autoencoder", "train", "--steps", "1", "--runs-dir", a_file], "--runs-dir", "is a file"),
        (["sweep", "--name", "s", "--runs-dir", a_file, "--grid", "lr=1e-3,3e-3"], "the sweep folder", "cannot be made, because"),
        (["bench", "speed", "--model", "2d", "--out", tmp_path], "--out", "is a folder"),
        (["data", "fetch", "emoji32", "--from", tmp_path], "DDPMCTL_DATA_DIR", "is a file"),
    ]
    before = snapshot(tmp_path)
    for args, *fragments in cases:
        r = cli_here(*args, env={**ENV, "DDPMCTL_DATA_DIR": str(a_file)})
        clean_error(r, *fragments)
    assert snapshot(tmp_path) == before  # nothing written, not even an empty file


def test_a_read_only_output_folder_is_refused_before_sampling(run, tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr("ddpmctl.api.Run.sample", lambda *a, **k: called.append(1))
    out = tmp_path / "ro"
    out.mkdir()
    faults = Faults(out.absolute(), errno.EROFS, 0)
    with monkeypatch.context() as m:
        faults.install(m)
        r = cli_here("sample", run, "--out", out / "sub", env=ENV)
    clean_error(r, f"--out {out / 'sub'} cannot be written, because {out} does not take new files (Read-only file system)")
    assert not called and not list(out.iterdir())


def test_resuming_a_run_whose_checkpoints_are_gone_keeps_its_history(run):
    before = (run / "metrics.jsonl").read_bytes()
    shutil.rmtree(run / "checkpoints")
    r = cli_here("train", "--resume", run, env=ENV)
    assert_clean_error(r, "has no checkpoint left", "metrics.jsonl goes to step 300", "put its checkpoints back")
    assert (run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_autoencoder_train_and_eval_keep_their_files(fault, monkeypatch, tmp_path):
    write_images(tmp_path / "imgs", 160)
    env = {"DDPMCTL_DATA_DIR": str(tmp_path / "data")}
    data = ["--data", "imagefolder", "-o", f"data.root={tmp_path / 'imgs'}", "-o", "data.size=8", "-o", "data.held_out=0.25"]
    tiny = ["-o", "autoencoder.channels=8", "-o", "autoencoder.channel_mult=[1,2]", "--batch-size", "8", "--threads", "1"]
    assert_ok(cli_here("autoencoder", "train", *data, *tiny, "--steps", "4", "--name", "ae", "--runs-dir", tmp_path / "runs", env={**ENV, **env}))
    ae = tmp_path / "runs" / "ae"
    evaluate = ["autoencoder", "eval", ae, "--metric", "memorisation", "--n", "20"]
    assert_ok(cli_here(*evaluate, env={**ENV, **env}))
    before = snapshot(ae)
    fails_cleanly(evaluate, ae, fault, 0, monkeypatch, env=env)
    fails_cleanly(["autoencoder", "train", "--resume", ae, "--steps", "8"], ae, fault, 2, monkeypatch, env=env)
    check_intact(ae, before, appended=("metrics.jsonl",), rewritten=("config.json",))
