"""The commands shown in the documentation work: the quick ones are run.

Convention. Every `ddpmctl ...` line in a fenced ```bash, ```console or ```sh block of README.md
and docs/*.md is a command a reader may type (a leading `$ ` is dropped, `# ...` comments and
`\\` continuations are understood, `a && b` is two commands). The test runs, in one scratch
folder and in page order (README.md, docs/tutorial.md, then the others), every command that is
quick on its own:

- `--help`, `--version`, `plugins list`, `plugins show`;
- `data show` of a 2-D dataset;
- `train` on a 2-D dataset (without --config or --resume), made tiny through the environment
  layer of the settings, which a flag in the command still overrides: DDPMCTL_STEPS=30, a
  2,000-point dataset, a width-16 one-block network and T = 200;
- `sample`, `eval` (2-D metrics) and `interpolate` of a run made earlier in this test.

Everything else (image data, downloads, benchmarks, long runs) is listed as skipped with the
reason. A command that runs must exit 0 and write what it says it writes. A block preceded by
the line `<!-- docs-test: skip -->` is never run. Commands run in this process (as the console
script does, like tests/test_errors_table.py) to stay within the time of a fast test;
`pytest tests/test_docs_commands.py -s` prints what ran and what was skipped, and why.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from ddpmctl import registry
from tests.conftest import REPO, cli_in_process

FENCE = re.compile(r"^```(bash|console|sh|shell)[^\n]*\n(.*?)^```", re.S | re.M)
SKIP_MARK = "<!-- docs-test: skip -->"
TINY_ENV = {
    "DDPMCTL_STEPS": "30",
    "DDPMCTL_DATA_OPTIONS__N": "2000",
    "DDPMCTL_NETWORK_OPTIONS__WIDTH": "16",
    "DDPMCTL_NETWORK_OPTIONS__DEPTH": "1",
    # Nested environment keys are read in lower case, so the schedule's `T` goes in as JSON.
    "DDPMCTL_SCHEDULE_OPTIONS__T": "200",
}
POINT_METRICS = {"kl", "wasserstein", "sliced-wasserstein"}


def pages() -> list[Path]:
    first = [REPO / "README.md", REPO / "docs" / "tutorial.md"]
    rest = [p for p in sorted((REPO / "docs").glob("*.md")) if p not in first]
    return [p for p in first + rest if p.is_file()]


@dataclass
class Command:
    page: str
    line: int
    env: dict[str, str]
    args: list[str]  # after `ddpmctl`

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: ddpmctl {shlex.join(self.args)}"


def commands(page: Path, root: Path = REPO) -> list[Command]:
    """Every `ddpmctl` command in the page's shell blocks, in order."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP_MARK:
            continue
        first_line = text[: m.start(2)].count("\n") + 1
        logical: list[tuple[int, str]] = []
        pending, start = "", 0
        for offset, raw in enumerate(m.group(2).splitlines()):
            line = raw.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not pending:
                start = first_line + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            logical.append((start, pending + line))
            pending = ""
        for lineno, line in logical:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            part: list[str] = []
            for tok in tokens + ["&&"]:
                if tok not in ("&&", ";"):
                    part.append(tok)
                    continue
                env = {}
                while part and re.match(r"^[A-Z_][A-Z0-9_]*=", part[0]):
                    k, v = part.pop(0).split("=", 1)
                    env[k] = v
                if part and part[0] == "ddpmctl":
                    out.append(Command(page.relative_to(root).as_posix(), lineno, env, part[1:]))
                part = []
    return out


def value(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def values(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def positional(args: list[str], after: int) -> str | None:
    """The first argument after the subcommand words that is not an option."""
    rest = args[after:]
    return rest[0] if rest and not rest[0].startswith("-") else None


def point_datasets() -> set[str]:
    """2-D datasets: the built-in toys, and the example plugin's glyph when installed."""
    names = {e.name for e in registry.entries("dataset") if e.value.startswith("ddpmctl.datasets.toy2d:")}
    return names | ({"glyph"} & set(registry.names("dataset")))


@dataclass
class State:
    root: Path
    runs: set[Path] = field(default_factory=set)  # run directories made by this test
    done: set[tuple] = field(default_factory=set)


def plan(cmd: Command, state: State) -> tuple[str | None, dict[str, str], list[Path]]:
    """(why it is skipped, or None to run it; extra environment; paths it must write)."""
    a = cmd.args
    if "--help" in a or a == ["--version"]:
        return None, {}, []
    if not a:
        return "no subcommand", {}, []
    sub = a[0]
    if (value(a, "--device") or "").startswith("cuda"):
        return "needs a GPU", {}, []
    for flag, kind in (("--data", "dataset"), ("--network", "network"), ("--schedule", "schedule"), ("--sampler", "sampler")):
        name = value(a, flag)
        if sub in ("train", "sample", "eval", "interpolate") and name and name not in registry.names(kind):
            return f"{kind} {name} is not installed", {}, []
    if sub == "plugins" and a[1:2] in (["list"], ["show"]):
        return None, {}, []
    if a[:2] == ["data", "show"]:
        name = positional(a, 2)
        if name not in point_datasets():
            return "image data", {}, []
        out = value(a, "--out") or f"{name}{'-noise' if '--noise' in a else ''}.png"
        return None, {}, [Path(out)]
    if sub == "train":
        data = value(a, "--data") or "spiral"
        if data not in point_datasets():
            return "image data", {}, []
        if value(a, "--config") or value(a, "--resume"):
            return "continues or configures a full run", {}, []
        steps = value(a, "--steps")
        if steps is not None and int(steps) > 500:
            return "long run", {}, []
        name = value(a, "--name")
        run = Path(value(a, "--runs-dir") or "runs") / name if name else None
        if run is not None and (state.root / run).exists():
            return f"{run} was already trained by an earlier command", {}, []
        return None, TINY_ENV, [run / "latest"] if run else []
    if sub in ("sample", "eval", "interpolate"):
        run = positional(a, 1)
        if run is None or (state.root / run).resolve() not in state.runs:
            return "needs a run this test does not make", {}, []
        if sub == "eval" and not set(values(a, "--metric") or ["wasserstein"]) <= POINT_METRICS:
            return "image metrics", {}, []
        if sub == "sample":
            out = Path(value(a, "--out") or Path(run) / "samples")
            grid = value(a, "--grid")
            return None, {}, [out] + ([Path(grid)] if grid else [])
        if sub == "eval":
            return None, {}, [Path(run) / "eval"]
        return None, {}, [Path(value(a, "--out") or Path(run) / "interpolate")]
    return "not quick", {}, []


def files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_extraction_understands_the_conventions(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "ddpmctl train --data spiral --name a && ddpmctl eval runs/a   # two commands\n"
        "$ ddpmctl sample runs/a \\\n  --n 10\n"
        "DDPMCTL_STEPS=5 ddpmctl train\n"
        "pip install ddpmctl\n"
        "```\n\n"
        f"{SKIP_MARK}\n```console\nddpmctl data fetch mnist\n```\n"
    )
    got = commands(page, root=tmp_path)
    assert [c.args for c in got] == [
        ["train", "--data", "spiral", "--name", "a"], ["eval", "runs/a"], ["sample", "runs/a", "--n", "10"], ["train"],
    ]
    assert got[3].env == {"DDPMCTL_STEPS": "5"} and got[2].line == 3


def test_quick_commands_in_the_docs_run(tmp_path, monkeypatch, capsys):
    registry.clear_cache()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    base_env = {"DDPMCTL_DATA_DIR": str(tmp_path / "data")}
    state = State(tmp_path)
    ran, skipped = [], []
    t0 = time.perf_counter()
    for page in pages():
        for cmd in commands(page):
            key = (tuple(cmd.args), tuple(sorted(cmd.env.items())))
            if key in state.done:
                continue
            state.done.add(key)
            why, env, expect = plan(cmd, state)
            if why:
                skipped.append(f"{cmd}  [skipped: {why}]")
                continue
            before, started = files(tmp_path), time.perf_counter()
            code, shown = cli_in_process(cmd.args, {**base_env, **env, **cmd.env}, monkeypatch, capsys)
            assert code == 0, f"{cmd}\nexit {code}\n{shown}"
            assert "Traceback" not in shown, f"{cmd}\n{shown}"
            for path in expect:
                assert (tmp_path / path).exists(), f"{cmd}: {path} was not written\n{shown}"
            if cmd.args[0] == "train" and expect:
                state.runs.add((tmp_path / expect[0]).parent.resolve())
            is_query = "--help" in cmd.args or cmd.args[0] == "plugins" or cmd.args == ["--version"]
            if not is_query:
                after = files(tmp_path)
                assert any(before.get(p) != t for p, t in after.items()), f"{cmd}: wrote no file\n{shown}"
            ran.append(f"{cmd}  [{time.perf_counter() - started:.1f} s]")
    elapsed = time.perf_counter() - t0
    print(f"ran {len(ran)} documented commands in {elapsed:.1f} s:", *ran, f"skipped {len(skipped)}:", *skipped, sep="\n  ")
    assert len(ran) >= 12, "fewer documented commands ran than expected; did the docs' conventions change?"
    trained = {c for c in ran if " train " in c}
    assert trained and any(" sample " in c for c in ran) and any(" eval " in c for c in ran), ran
