"""The run directory: everything needed to sample or resume, in JSON and safetensors.

    runs/<name>/
      config.json                 resolved config, plugins and versions, data shape
      checkpoints/step-NNNNNNNN.safetensors
      latest                      the name of the newest complete checkpoint
      metrics.jsonl               one JSON record per logged step
      loss.png, samples*.png, eval/*.json, ...
      .lock, .lock.pid            held by the one process writing the run (WriterLock), and its pid
      tensorboard/                event files of the TensorBoard tracker (trackers/), when asked for

A process that writes a run (train, distill, autoencoder train) holds its WriterLock from the
moment it makes or reopens the directory until it ends; readers (sample, eval) take none.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import filelock

from ddpmctl import checkpoint
from ddpmctl.errors import CheckpointError, RunError, WriteError
from ddpmctl.outputs import append_bytes, atomic_write_bytes, check_folder, write_error
from ddpmctl.record import RunRecord

_CKPT = re.compile(r"^step-(\d+)\.safetensors$")
LOCK, LOCK_PID = ".lock", ".lock.pid"


class WriterLock:
    """One writer at a time for a folder: FOLDER/.lock, an flock taken with ``filelock`` (the kernel
    drops it when its process dies, so a killed writer leaves no stale lock), and FOLDER/.lock.pid,
    the holder's pid, written once it holds the lock (filelock empties its own file on acquiring)."""

    def __init__(self, folder: Path, what: str):
        self.folder, self.what = Path(folder), what  # what: "run runs/x", named in the refusal
        self._lock: Optional[filelock.BaseFileLock] = None

    def acquire(self) -> "WriterLock":
        """Take the lock, or refuse in one sentence naming the process that holds it."""
        lock = filelock.FileLock(self.folder / LOCK)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunError(f"{self.what} is being written by {self.holder()}; wait for it to finish or stop it first.") from None
        except OSError as exc:
            raise RunError(f"cannot lock {self.what} for writing ({exc.strerror or exc}); choose a writable folder.") from None
        self._lock = lock
        try:
            atomic_write_bytes(self.folder / LOCK_PID, f"{os.getpid()}\n".encode())
        except WriteError:
            self.release()
            raise
        return self

    def holder(self) -> str:
        """'process PID' of the holder, as its pid file says."""
        try:
            pid = int((self.folder / LOCK_PID).read_text().strip())
        except (OSError, ValueError):
            return "another process"  # it holds the lock but has not written its pid yet
        return f"process {pid}"

    def release(self) -> None:
        """Let the lock go (the pid file first, so that a next holder's is never removed)."""
        if self._lock is None:
            return
        (self.folder / LOCK_PID).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.writer: Optional[WriterLock] = None  # held while this process writes the run
        self.tracker = None  # a trackers.Tracker: receives what metrics.jsonl receives, and the sample grids

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, record: RunRecord) -> "RunDir":
        """Make the run directory, locked for writing by this process (``unlock`` when done)."""
        run = cls(path)
        if (run.path / "config.json").exists():
            raise RunError(f"run directory {run.path} already exists; pass --resume {run.path} to continue it or choose another --name.")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(run.path, exc) from None
        run.lock()
        if (run.path / "config.json").exists():  # made by another process since the first look
            run.unlock()
            raise RunError(f"run directory {run.path} already exists; pass --resume {run.path} to continue it or choose another --name.")
        try:
            run.write_record(record)
        except WriteError:
            run.unlock()
            raise
        return run

    def lock(self) -> None:
        """Lock the run for writing by this process; refused while another process writes it."""
        if self.writer is None or not self.writer.held:
            self.writer = WriterLock(self.path, f"run {self.path}").acquire()

    def unlock(self) -> None:
        """Let the run's lock go and close its tracker (the end of a writing session)."""
        tracker, self.tracker = self.tracker, None
        try:
            if tracker is not None:
                tracker.close()
        finally:
            if self.writer is not None:
                self.writer.release()

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        run = cls(path)
        if not run.path.exists():
            raise RunError(f"run directory {run.path} does not exist; train one with `ddpmctl train` or check the path.")
        if not (run.path / "config.json").is_file():
            raise RunError(f"{run.path} is not a ddpmctl run directory (no config.json); pass a folder made by `ddpmctl train`.")
        return run

    @property
    def record(self) -> RunRecord:
        """config.json, typed: the resolved settings, the data, the plugins and versions."""
        path = self.path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"{path} is unreadable ({exc}); restore it from a copy or train a new run.") from None
        return RunRecord.from_json(raw, str(path))

    def write_record(self, record: RunRecord) -> None:
        atomic_write_bytes(self.path / "config.json", json.dumps(record.to_json(), indent=2).encode())

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """All checkpoint files, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir() if (m := _CKPT.match(p.name))]
        return sorted(found)

    def remove_partial_writes(self) -> list[Path]:
        """Delete temporary files left by a process killed while writing (see atomic_write_bytes)."""
        found = [p for d in (self.path, self.checkpoint_dir) if d.is_dir() for p in d.glob(".*.tmp")]
        for p in found:
            p.unlink(missing_ok=True)
        return found

    def latest(self) -> Path | None:
        """The checkpoint the ``latest`` pointer names, else the newest by step. The pointer must
        name a checkpoint file of this run (a name such as ../../other-run/... is refused)."""
        f = self.path / "latest"
        if f.is_file():
            name = f.read_text(errors="replace").strip()
            p = self.checkpoint_dir / name
            if not _CKPT.match(name):
                raise RunError(f"{f} names {name!r}, which is not a checkpoint of this run; delete {f} to load the newest checkpoint.")
            if p.is_file():
                return p
        ckpts = self.checkpoints()
        return ckpts[-1][1] if ckpts else None

    def save_checkpoint(self, step: int, tensors: dict, meta: dict, keep: int = 3) -> Path:
        path = self.checkpoint_dir / f"step-{step:08d}.safetensors"
        checkpoint.save(path, tensors, {"step": step, **meta})
        atomic_write_bytes(self.path / "latest", (path.name + "\n").encode())
        for _, old in self.checkpoints()[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Path | None = None, fallback: bool = True):
        """Load ``path`` or the latest checkpoint; with ``fallback``, a damaged newest one is
        skipped for the previous good one. Returns (tensors, meta, path, skipped: list of errors)."""
        if path is not None:
            tensors, meta = checkpoint.load(path)
            return tensors, meta, Path(path), []
        latest = self.latest()
        if latest is None:
            raise RunError(f"run {self.path} has no checkpoint yet; train it first with `ddpmctl train`.")
        candidates = [latest] + [p for _, p in reversed(self.checkpoints()) if p != latest]
        skipped = []
        for p in candidates if fallback else candidates[:1]:
            try:
                tensors, meta = checkpoint.load(p)
                return tensors, meta, p, skipped
            except CheckpointError as exc:
                skipped.append(str(exc))
        raise CheckpointError(skipped[0] if len(skipped) == 1 else f"no readable checkpoint in {self.checkpoint_dir}: " + " ".join(skipped))

    # -- metrics ----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl, and hand it to the run's tracker."""
        append_bytes(self.metrics_path, (json.dumps(record) + "\n").encode())
        if self.tracker is not None:
            self.tracker.record(record)

    def wrote_picture(self, path: Path, step: int, tag: str) -> None:
        """A picture the run has just written at ``step`` (a sample grid, a plot), for its tracker."""
        if self.tracker is not None:
            self.tracker.picture(tag, step, Path(path))

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if isinstance(record, dict) and isinstance(record.get("step", 0), int):  # not one of ours: skipped
                out.append(record)
        return out

    def check_restart(self) -> None:
        """A run without a checkpoint starts again at step 0 and drops its records after step 0:
        refused when it had written one (its ``latest`` pointer or stop.json is there), so that
        the history in metrics.jsonl is never thrown away with checkpoints that were removed."""
        if (self.path / "latest").exists() or (self.path / "stop.json").exists():
            last = max((r.get("step", 0) for r in self.metrics()), default=0)  # metrics() keeps only records with an integer step
            raise RunError(f"run {self.path} has no checkpoint left though it had written some (metrics.jsonl goes to step {last}); "
                           f"put its checkpoints back in {self.checkpoint_dir}, or start a new run with --name.")

    def truncate_metrics(self, step: int) -> None:
        """Drop records after ``step`` (written after the checkpoint a resume starts from)."""
        records = self.metrics()
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) < len(records):  # the file is rewritten only when records are dropped
            atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def check_run_folder(runs_dir: Path, run: Optional[RunDir]) -> None:
    """Where a training session writes takes files: --runs-dir for a new run, the run itself when resumed."""
    if run is None:
        check_folder(runs_dir, "--runs-dir")
    else:
        check_folder(run.path, "the run directory")

