"""A sweep: one training run per cell of a grid over settings, every cell evaluated the same way.

    plan = sweeps.plan("lr-width", {"lr": [1e-3, 3e-4], "network.width": [32, 64]}, Path("runs"), data="8gaussians")
    sweeps.write(plan)                          # runs/lr-width/sweep.json and one CELL.toml per cell
    outcome = sweeps.run(plan, parallel=2)      # a `ddpmctl train` process per cell, two at a time

A grid key is a TrainSettings field (``lr``, ``steps``, ``network``, ``schedule``, ...) or a plugin
option ``KIND.KEY`` (``network.width``, ``schedule.T``, ``data.n``). ``plan`` builds every cell's
settings (defaults < TOML file < environment < common settings < the cell's values) and makes the
checks `ddpmctl train` makes before it trains, so that a bad grid is one sentence before anything
is written or trained. The layout:

    RUNS_DIR/NAME/
      sweep.json      the grid, the common settings and the cells (name -> values)
      CELL.toml       a cell's settings: `ddpmctl train --config CELL.toml` trains it alone
      CELL.log        the output of its `ddpmctl train` sessions, appended
      CELL/           its run directory (run.py), named after its values: lr=0.001,network.width=32

``run`` trains each cell in its own `ddpmctl train` process (the environment's settings are folded
into CELL.toml), at most ``parallel`` at once with cores // parallel torch threads each (OpenMP
threads of processes that share cores spin against each other: devices.set_threads). A cell whose
RUN/stop.json says it finished is not run again; one with a run directory is resumed
(`ddpmctl train --resume`); the others start. ``stop()`` asks the running cells to checkpoint and
stop (SIGINT, as Ctrl-C does), and no new cell starts; after a cell fails no new cell starts either.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

import tomli_w

from ddpmctl import convergence
from ddpmctl.checkpoint import atomic_write_bytes
from ddpmctl.config import ENV_PREFIX, TrainSettings, load_settings
from ddpmctl.datasets.base import Dataset
from ddpmctl.devices import cpu_count
from ddpmctl.errors import ConfigError, DdpmctlError, OptionsError, RunError
from ddpmctl.events import Events
from ddpmctl.outputs import check_folder
from ddpmctl.pipeline import build_dataset
from ddpmctl.run import RunDir, WriterLock
from ddpmctl.session import check_names, check_resolved

# KIND of a plugin option KIND.KEY -> the settings field holding that plugin's options.
OPTIONS = {"data": "data_options", "network": "network_options", "schedule": "schedule_options",
           "process": "process_options", "method": "method_options", "eval": "eval_options"}
# Settings the sweep sets itself, for every cell.
FIXED = {"name": "the sweep names each cell's run after its values",
         "runs_dir": "every cell's run is made in RUNS_DIR/NAME",
         "resume": "a sweep resumes its unfinished cells itself"}
# Every cell is evaluated the same way, so that the compare table is fair.
SHARED = {f for f in TrainSettings.model_fields if f.startswith("eval_")}
# May differ when a sweep is run again: how fast a step runs, where data lives and where records
# are also sent change no weights.
FREE = {"threads", "device", "compile", "precision", "data_dir", "tracker", "tracker_options"}
# stop.json reasons of a finished run (the other one is "interrupted").
FINISHED = ("steps", "until-loss", "until-metric", "max-time")
DEFAULT_EVAL_EVERY = 500  # unless set: evaluations at step 0, every 500 steps and at the end
INTERRUPTED = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}  # exit codes of a stopped `ddpmctl train`
POLL_S = 0.2


# ---------------------------------------------------------------------------------------------
# Keys and values


def setting(key: str, what: str = "setting") -> tuple[str, Optional[str]]:
    """(field, None) for a TrainSettings field (``lr``, ``batch-size``), (field, option) for a
    plugin option KIND.KEY (``network.width`` -> ("network_options", "width"))."""
    raw = str(key).strip()
    kind, dot, option = raw.partition(".")
    if dot:
        kind = kind.replace("-", "_").removesuffix("_options")
        if kind in OPTIONS and option:
            return OPTIONS[kind], option
    elif raw.replace("-", "_") in TrainSettings.model_fields:
        return raw.replace("-", "_"), None
    close = difflib.get_close_matches(raw, [*TrainSettings.model_fields, *(f"{k}.{raw.partition('.')[2]}" for k in OPTIONS)], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{what} {raw!r} is not a setting of `ddpmctl train`{hint}; use a settings field such as lr, steps, batch_size, "
                      f"network or schedule (docs/config.md), or a plugin option KIND.KEY with KIND one of {', '.join(OPTIONS)} (e.g. network.width).")


def shown(field_name: str, option: Optional[str]) -> str:
    """How a key is written in the grid, sweep.json and cell names: ``lr``, ``network.width``."""
    return field_name if option is None else f"{field_name.removesuffix('_options')}.{option}"


def settings_of(values: dict[str, Any], what: str = "setting") -> dict[str, Any]:
    """TrainSettings keyword arguments of KEY -> value pairs: plugin options KIND.KEY go into the
    KIND_options dictionaries."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name, option = setting(key, what)
        if option is None:
            out[name] = value
        else:
            out[name] = {**out.get(name, {}), option: value}
    return out


def label(value: Any) -> str:
    """A value as a cell's name shows it, filesystem-safe: 0.001, 3e-05, true, dit, [32, 64] -> 32_64."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def cell_name(values: dict[str, Any]) -> str:
    """``lr=0.001,network.width=32``: the grid keys in order, each with its value's label."""
    name = ",".join(f"{re.sub(r'[^A-Za-z0-9._+-]+', '_', k)}={label(v)}" for k, v in values.items())
    if len(name) > 150:  # file names have a limit: keep the start readable, make the end unique
        digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]
        name = f"{name[:139]}-{digest}"
    return name


def check_grid(grid: dict[str, Any], common: dict[str, Any]) -> dict[str, list]:
    """The grid with its keys as ``shown`` (sorted), checked: known settings that may vary, each
    given once, with a non-empty list of distinct values, and not among the common settings."""
    if not grid:
        raise ConfigError("the sweep's grid is empty; give at least one setting and its values, e.g. --grid lr=1e-3,3e-4.")
    out: dict[str, list] = {}
    for key, values in grid.items():
        raw = str(key).strip()
        if raw.replace("-", "_") in FIXED:
            raise ConfigError(f"grid setting {raw!r} cannot vary across cells: {FIXED[raw.replace('-', '_')]}; drop it from the grid.")
        name, option = setting(raw, "grid setting")
        k = shown(name, option)
        if name in SHARED:
            raise ConfigError(f"grid setting {k!r} cannot vary: every cell of a sweep is evaluated the same way, so that the compare "
                              f"table is fair; set it once for all cells (--eval-every, --eval-metric, --eval-n or --set {k}=VALUE).")
        if k in out:
            raise ConfigError(f"grid setting {k!r} is given twice; give all its values in one --grid {k}=V1,V2.")
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
            raise ConfigError(f"grid setting {k!r} needs a list of values, not {values!r}; e.g. --grid {k}=V1,V2.")
        values = list(values)
        if not values:
            raise ConfigError(f"grid setting {k!r} has no values; give at least one, e.g. --grid {k}=V1,V2.")
        labels = [label(v) for v in values]
        repeated = [v for v, lab in zip(values, labels) if labels.count(lab) > 1]
        if repeated:
            raise ConfigError(f"grid setting {k!r} repeats the value {repeated[0]!r}; give each value once.")
        if (option is None and name in common) or (option is not None and option in (common.get(name) or {})):
            raise ConfigError(f"{k} is both in the grid and in the common settings; drop one of them.")
        out[k] = values
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# The plan: every cell's settings, checked


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # grid key -> value
    settings: dict[str, Any]  # the settings written to CELL.toml: common (TOML and environment folded in) + values
    steps: int  # training steps, resolved for the data


@dataclass
class Plan:
    name: str
    folder: Path  # RUNS_DIR/NAME
    grid: dict[str, list]
    common: dict[str, Any]  # the explicit settings every cell shares, as JSON
    cells: list[Cell]

    def record(self) -> dict:
        """The content of sweep.json."""
        return {"name": self.name, "grid": self.grid, "common": self.common, "cells": {c.name: c.values for c in self.cells}}


def plan(name: str, grid: dict[str, Any], runs_dir: Optional[Path] = None, config: Optional[Path] = None, /, **common) -> Plan:
    """Every cell of ``grid`` over the ``common`` settings (TrainSettings keyword arguments, over
    the TOML ``config`` and the environment), checked as `ddpmctl train` checks a run before it
    trains, and the sweep's folder checked to take files. Raises a DdpmctlError with one
    sentence; writes nothing."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]*", str(name or "")):
        raise ConfigError(f"sweep name {name!r} cannot name a folder; use letters, digits, '.', '_', '+' and '-'.")
    for key in FIXED:
        if key in common:
            raise ConfigError(f"{key} cannot be a common setting of a sweep: {FIXED[key]}; drop it (use the sweep's --name and --runs-dir).")
    grid = check_grid(grid, common)
    flags, base = common_settings(config, common)
    folder = Path(runs_dir if runs_dir is not None else base.runs_dir) / name
    check_folder(folder, "the sweep folder")  # takes files, before any cell is checked
    explicit = base.model_dump(mode="json", include=base.model_fields_set - set(FIXED), exclude_none=True)
    datasets: dict[str, Dataset] = {}
    cells = [make_cell(folder, config, flags, dict(zip(grid, combo)), datasets) for combo in itertools.product(*grid.values())]
    return Plan(name, folder, json.loads(json.dumps(grid, default=str)), explicit, cells)


def common_settings(config: Optional[Path], common: dict) -> tuple[dict, TrainSettings]:
    """The common settings alone, checked, with evaluations every DEFAULT_EVAL_EVERY steps unless set."""
    try:
        s = load_settings(TrainSettings, config, **common)
        flags = dict(common)
        if "eval_every" not in s.model_fields_set:
            flags["eval_every"] = DEFAULT_EVAL_EVERY
            s = load_settings(TrainSettings, config, **flags)
    except DdpmctlError as exc:
        raise type(exc)(f"the sweep's common settings are refused ({str(exc).rstrip('.')}); fix them.") from None
    return flags, s


def make_cell(folder: Path, config: Optional[Path], common: dict, values: dict[str, Any], datasets: dict) -> Cell:
    """One cell: its settings built and checked; a refusal names the cell."""
    name = cell_name(values)
    flags = {**common, "name": name, "runs_dir": folder}
    for key, value in settings_of(values).items():
        flags[key] = {**(flags.get(key) or {}), **value} if isinstance(value, dict) and key.endswith("_options") else value
    try:
        s = load_settings(TrainSettings, config, **flags)
        resolved = check(s, datasets)
        explicit = s.model_dump(mode="json", include=s.model_fields_set - set(FIXED), exclude_none=True)
        to_toml(explicit)
    except DdpmctlError as exc:
        raise type(exc)(f"sweep cell {name} cannot be trained ({str(exc).rstrip('.')}); change that value in the grid or the common settings.") from None
    return Cell(name, json.loads(json.dumps(values, default=str)), explicit, resolved.steps)


def check(s: TrainSettings, datasets: dict[str, Dataset]) -> TrainSettings:
    """The checks of Session.prepare (session.check_names, check_resolved) without building a
    network or a run, and the evaluations' and stop criteria's. Returns ``s`` resolved for its
    data (datasets are built once per data setting, in ``datasets``)."""
    check_names(s)
    key = json.dumps([s.data, s.data_options, str(s.data_dir)], sort_keys=True, default=str)
    if key not in datasets:
        with data_dir(s.data_dir):
            datasets[key] = build_dataset(s.data, s.data_options)
    ds = datasets[key]
    r = check_resolved(s, ds)
    convergence.watch(r, ds)
    return r


@contextlib.contextmanager
def data_dir(path: Optional[Path]):
    """Datasets look in ``path`` (the data_dir setting) while the context lasts."""
    old = os.environ.get("DDPMCTL_DATA_DIR")
    if path is not None:
        os.environ["DDPMCTL_DATA_DIR"] = str(path)
    try:
        yield
    finally:
        if path is not None and old is None:
            os.environ.pop("DDPMCTL_DATA_DIR", None)
        elif path is not None:
            os.environ["DDPMCTL_DATA_DIR"] = old


# ---------------------------------------------------------------------------------------------
# Files


def write(p: Plan) -> None:
    """sweep.json and the CELL.toml files; a sweep already made under this name must have the same
    grid and common settings (FREE ones aside)."""
    path = p.folder / "sweep.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"{path} is unreadable ({exc}); delete it or choose another sweep name.") from None
        same(p, old)
    p.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(p.record(), indent=2).encode())
    for cell in p.cells:
        atomic_write_bytes(p.folder / f"{cell.name}.toml", to_toml(cell.settings).encode())


def same(p: Plan, old: dict) -> None:
    """Refuse a plan whose grid or common settings differ from the sweep.json of its folder."""
    changes = []
    grid, old_grid = p.grid, old.get("grid") or {}
    for key in sorted(set(grid) | set(old_grid)):
        a = sorted(label(v) for v in old_grid.get(key, []))
        b = sorted(label(v) for v in grid.get(key, []))
        if a != b:
            changes.append(f"grid {key} was {', '.join(a) or 'not in the grid'}, now {', '.join(b) or 'not in the grid'}")
    common, old_common = json.loads(json.dumps(p.common)), old.get("common") or {}
    for key in sorted((set(common) | set(old_common)) - FREE):
        if common.get(key) != old_common.get(key):
            changes.append(f"{key} was {old_common.get(key, 'unset')!r}, now {common.get(key, 'unset')!r}")
    if changes:
        raise ConfigError(f"sweep {p.folder} was started with other settings ({'; '.join(changes)}); run it again with the grid and "
                          f"settings of its sweep.json to resume it, or choose another --name.")


def to_toml(values: dict[str, Any]) -> str:
    """Settings as TOML that tomllib reads back as the same dict (tomli-w)."""
    try:
        return tomli_w.dumps(values)
    except TypeError as exc:
        raise ConfigError(f"a setting cannot be written to a TOML file ({exc}); use a number, a string, true or false, a list or a table.") from None


# ---------------------------------------------------------------------------------------------
# Running


def finished(run_dir: Path) -> Optional[str]:
    """Why a cell's run is finished (the reason in its stop.json; "steps" when its last checkpoint
    is at its last step, for a run killed while it drew its plots), or None."""
    reason = (convergence.read_stop(run_dir) or {}).get("reason")
    if reason in FINISHED:
        return reason
    if (run_dir / "config.json").is_file():
        run = RunDir(run_dir)
        try:
            steps = run.record.config.steps
        except DdpmctlError:
            return None
        ckpts = run.checkpoints()
        if steps and ckpts and ckpts[-1][0] >= steps:
            return "steps"
    return None


def last_step(run_dir: Path) -> int:
    """The step of the last record of RUN/metrics.jsonl (read from its end), 0 without one."""
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(line)["step"])
    return 0


def command(p: Plan, cell: Cell, threads: int) -> list[str]:
    """`ddpmctl train` of a cell: resumed when its run directory exists, else made in the sweep's folder."""
    run_dir = p.folder / cell.name
    cmd = [sys.executable, "-m", "ddpmctl", "train", "--config", str(p.folder / f"{cell.name}.toml")]
    if (run_dir / "config.json").is_file():
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += ["--name", cell.name, "--runs-dir", str(p.folder)]
    if "threads" not in cell.settings:
        cmd += ["--threads", str(threads)]
    return cmd


def child_env() -> dict[str, str]:
    """The environment of a cell's process: DDPMCTL_* settings are already in its CELL.toml (and
    would sit above it), so they go."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) or k == "DDPMCTL_DEBUG"}
    return {**env, "PYTHONUNBUFFERED": "1"}


@dataclass
class Child:
    cell: Cell
    process: subprocess.Popen
    log: IO[bytes]

    def interrupt(self) -> None:
        """Ask the cell's `ddpmctl train` to checkpoint and stop, as Ctrl-C does."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)


def start(p: Plan, cell: Cell, threads: int, events: Events) -> Child:
    cmd = command(p, cell, threads)
    resumed = "--resume" in cmd
    log = open(p.folder / f"{cell.name}.log", "ab")
    log.write(f"--- {_dt.datetime.now().isoformat(timespec='seconds')}: ddpmctl {' '.join(cmd[3:])}\n".encode())
    log.flush()
    # Same process group: Ctrl-C in the terminal reaches the cells too.
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())
    events.note(f"{'resume' if resumed else 'start'} {cell.name} ({threads} threads)")
    return Child(cell, process, log)


@dataclass
class Outcome:
    """How a sweep ended: the cells done now, skipped (finished before), interrupted, failed
    (name, exit code), and not started."""

    folder: Path
    runs: list[Path]  # every cell's run directory, in grid order
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def n_finished(self) -> int:
        return len(self.done) + len(self.skipped)

    def check(self) -> None:
        """Raise RunError naming the failed cells and their logs."""
        if not self.failed:
            return
        which = ", ".join(f"{n} ({exit_text(rc)})" for n, rc in self.failed)
        logs = ", ".join(str(self.folder / f"{n}.log") for n, _ in self.failed)
        raise RunError(f"sweep cell{'s' if len(self.failed) > 1 else ''} {which} failed; see {logs}, fix the cause and run the sweep "
                       "again: finished cells are not run again.")


def exit_text(rc: int) -> str:
    return f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"


def run(p: Plan, parallel: int = 1, events: Optional[Events] = None, stop: Optional[Callable[[], bool]] = None) -> Outcome:
    """Train the plan's unfinished cells, ``parallel`` at once; see the module's docstring. The
    sweep's folder is locked meanwhile (a second run of the same sweep is refused), each cell's
    run by its own `ddpmctl train`."""
    if parallel < 1:
        raise OptionsError(f"parallel {parallel} is not a number of cells at once; use 1 or more.")
    with WriterLock(p.folder, f"sweep {p.folder}"):
        return _run(p, parallel, events or Events(), stop or (lambda: False))


def _run(p: Plan, parallel: int, events: Events, stop: Callable[[], bool]) -> Outcome:
    outcome = Outcome(p.folder, [p.folder / c.name for c in p.cells])
    todo = []
    for cell in p.cells:
        if why := finished(p.folder / cell.name):
            outcome.skipped.append(cell.name)
            events.note(f"{cell.name}: finished before ({why}), not run again")
        else:
            todo.append(cell)
    k = min(parallel, max(1, len(todo)))
    threads = max(1, cpu_count() // k)
    running: dict[str, Child] = {}
    try:
        while todo or running:
            if not outcome.stopped and stop():
                outcome.stopped = True
                for child in running.values():
                    child.interrupt()
            while todo and len(running) < k and not (outcome.stopped or outcome.failed):
                cell = todo.pop(0)
                running[cell.name] = start(p, cell, threads, events)
            if not running:
                break
            _reap(running, outcome, events)
            _show(p, running, outcome, events)
            time.sleep(POLL_S)
    except BaseException:  # a second Ctrl-C: the cells, told too, leave at once
        for child in running.values():
            child.interrupt()
        raise
    outcome.left = [c.name for c in todo]
    _show(p, running, outcome, events)
    return outcome


def _reap(running: dict[str, Child], outcome: Outcome, events: Events) -> None:
    """Record the cells whose process has ended."""
    for name, child in list(running.items()):
        rc = child.process.poll()
        if rc is None:
            continue
        del running[name]
        child.log.close()
        events.progress(name, last_step(outcome.folder / name), child.cell.steps)
        if rc == 0:
            outcome.done.append(name)
            events.note(f"{name}: done")
        elif outcome.stopped and rc in INTERRUPTED:
            outcome.interrupted.append(name)
            events.note(f"{name}: interrupted at step {last_step(outcome.folder / name)}, checkpoint saved")
        else:
            outcome.failed.append((name, rc))
            events.note(f"{name}: failed ({exit_text(rc)}); its output is in {outcome.folder / f'{name}.log'}", "warning")


def _show(p: Plan, running: dict[str, Child], outcome: Outcome, events: Events) -> None:
    """Progress: cells finished of all, and the step of each running cell."""
    left = len(p.cells) - outcome.n_finished - len(running)
    events.progress(f"sweep {p.name}", outcome.n_finished, len(p.cells), f"{len(running)} running, {left} not finished")
    for name, child in running.items():
        events.progress(name, last_step(p.folder / name), child.cell.steps)
