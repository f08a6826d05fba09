"""The run directory: everything needed to sample or resume, in JSON and safetensors.

    runs/<name>/
      config.json                 resolved config, plugins and versions, data shape
      checkpoints/step-NNNNNNNN.safetensors
      latest                      the name of the newest complete checkpoint
      metrics.jsonl               one JSON record per logged step
      loss.png, samples*.png, eval/*.json, ...
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ddpmctl import checkpoint
from ddpmctl.errors import CheckpointError, RunError
from ddpmctl.record import RunRecord

_CKPT = re.compile(r"^step-(\d+)\.safetensors$")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, record: RunRecord) -> "RunDir":
        run = cls(path)
        if (run.path / "config.json").exists():
            raise RunError(f"run directory {run.path} already exists; pass --resume {run.path} to continue it or choose another --name.")
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_record(record)
        return run

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        run = cls(path)
        if not run.path.exists():
            raise RunError(f"run directory {run.path} does not exist; train one with `ddpmctl train` or check the path.")
        if not (run.path / "config.json").is_file():
            raise RunError(f"{run.path} is not a ddpmctl run directory (no config.json).")
        return run

    @property
    def record(self) -> RunRecord:
        """config.json, typed: the resolved settings, the data, the plugins and versions."""
        path = self.path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"{path} is unreadable ({exc}).") from None
        return RunRecord.from_json(raw, str(path))

    def write_record(self, record: RunRecord) -> None:
        checkpoint.atomic_write_bytes(self.path / "config.json", json.dumps(record.to_json(), indent=2).encode())

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
        f = self.path / "latest"
        if f.is_file():
            p = self.checkpoint_dir / f.read_text().strip()
            if p.is_file():
                return p
        ckpts = self.checkpoints()
        return ckpts[-1][1] if ckpts else None

    def save_checkpoint(self, step: int, tensors: dict, meta: dict, keep: int = 3) -> Path:
        path = self.checkpoint_dir / f"step-{step:08d}.safetensors"
        checkpoint.save(path, tensors, {"step": step, **meta})
        checkpoint.atomic_write_bytes(self.path / "latest", (path.name + "\n").encode())
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
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
        return out

    def truncate_metrics(self, step: int) -> None:
        """Drop records after ``step`` (written after the checkpoint a resume starts from)."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= step]
        checkpoint.atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
