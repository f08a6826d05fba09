"""One writer per run: a second process that would write a run (train --resume, a sweep of the
same name) is refused with one sentence naming the holder's pid; a writer killed with SIGKILL
leaves no lock behind (an flock dies with its process), so the run resumes; under torchrun only
rank 0 takes the lock; readers (sample) take none."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddpmctl.errors import RunError
from ddpmctl.run import LOCK_PID, RunDir, WriterLock
from tests.conftest import REPO, assert_clean_error, assert_ok, cli_here

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TINY = ["--data", "8gaussians", "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=50", "-o", "data.n=1000",
        "--batch-size", "64", "--threads", "1"]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}
    return {**env, **ONE_THREAD, "PYTHONUNBUFFERED": "1", "DDPMCTL_LOG_EVERY": "5"}


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the child ended before {what}: {process.stderr.read() if process.stderr else ''}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def hold(folder: Path) -> subprocess.Popen:
    """A process that holds FOLDER's writer lock until its stdin closes."""
    code = ("import sys; from pathlib import Path; from ddpmctl.run import WriterLock; "
            f"lock = WriterLock(Path({str(folder)!r}), 'x').acquire(); print('held', flush=True); sys.stdin.read(); lock.release()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO, env=child_env())
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    return p


def let_go(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=60)


def last_checkpoint(run: Path) -> int:
    return max((int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.safetensors")), default=0)


def test_a_second_writer_is_refused_naming_the_holder_and_a_sigkilled_one_leaves_no_lock(tmp_path):
    runs = tmp_path / "runs"
    run = runs / "held"
    p = subprocess.Popen([sys.executable, "-m", "ddpmctl", "train", *TINY, "--steps", "1000000", "--checkpoint-every", "20",
                          "--name", "held", "--runs-dir", runs], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         cwd=REPO, env=child_env())
    try:
        wait_for(lambda: (run / LOCK_PID).is_file() and last_checkpoint(run) >= 20, p, "the first checkpoint")
        assert int((run / LOCK_PID).read_text()) == p.pid
        before = (run / "metrics.jsonl").stat().st_size

        # A second writer, while the first trains: one sentence with the holder's pid; nothing written.
        r = cli_here("train", "--resume", run, "--steps", "2000000")
        msg = assert_clean_error(r, f"run {run} is being written by process {p.pid}", "wait for it to finish or stop it first")
        assert msg.count(". ") == 0 and msg.endswith(".")
        assert (run / "metrics.jsonl").stat().st_size >= before  # the first writer's log, untouched by the second

        # A reader takes no lock.
        assert_ok(cli_here("sample", run, "--n", "50", "--steps", "5", "--sampler", "ddim"))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (run / LOCK_PID).is_file()  # the killed writer's pid file stays; its flock went with it

    step = last_checkpoint(run)
    r = cli_here("train", "--resume", run, "--steps", str(step + 10))
    assert_ok(r)
    assert f"resuming {run} from step-" in r.stdout  # the newest checkpoint `latest` names (one being written may be newer)
    assert last_checkpoint(run) == step + 10
    assert not (run / LOCK_PID).exists()  # let go at the end


def test_the_lock_names_another_process_until_its_pid_is_written_and_is_reentrant_within_a_process(tmp_path):
    lock = WriterLock(tmp_path, f"run {tmp_path}").acquire()
    assert (tmp_path / LOCK_PID).read_text().strip() == str(os.getpid())
    (tmp_path / LOCK_PID).unlink()
    with pytest.raises(RunError, match=f"run {tmp_path} is being written by another process; wait"):
        WriterLock(tmp_path, f"run {tmp_path}").acquire()  # a second lock of the same file, even in one process
    lock.release()
    with WriterLock(tmp_path, "x"):
        pass
    run = RunDir(tmp_path)
    run.lock()
    run.lock()  # a run already locked by this object stays locked
    run.unlock()
    run.unlock()


def test_a_sweep_being_run_is_refused_before_any_cell_starts(tmp_path):
    folder = tmp_path / "runs" / "lw"
    folder.mkdir(parents=True)
    p = hold(folder)
    try:
        r = cli_here("sweep", "--name", "lw", "--runs-dir", tmp_path / "runs", "--data", "8gaussians", "--steps", "20",
                     "--set", "network.depth=1", "--set", "schedule.T=50", "--set", "data.n=1000", "--grid", "lr=1e-3,3e-3")
        assert_clean_error(r, f"sweep {folder} is being written by process {p.pid}")
    finally:
        let_go(p)
    assert not [c for c in folder.iterdir() if c.is_dir()]  # no cell started


def test_a_resume_is_refused_before_any_work_while_another_process_holds_the_run(tmp_path, tiny_run_copy):
    run = tiny_run_copy
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in (".lock", LOCK_PID)}
    p = hold(run)
    try:
        for args in (["train", "--resume", run, "--steps", "400"], ["distill", "--resume", run]):
            assert_clean_error(cli_here(*args), f"is being written by process {p.pid}")
    finally:
        let_go(p)
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in (".lock", LOCK_PID)}
    assert after == before


def test_under_torchrun_only_rank_0_locks_the_run(tmp_path, tiny_run_copy):
    """Two processes resume one run: were rank 1 to lock it too, one of them would be refused."""
    run = tiny_run_copy
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ddpmctl", "train", "--resume", str(run), "--steps", "320", "--device", "cpu"],
        capture_output=True, text=True, env={**child_env(), "COLUMNS": "200"}, cwd=REPO, timeout=300,
    )
    assert_ok(r)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert steps[-1] == 320 and len(steps) == len(set(steps))  # one writer: no record twice
    assert not (run / LOCK_PID).exists()


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    dest = tmp_path / "copy" / "tiny"
    shutil.copytree(tiny_run, dest)
    return dest
