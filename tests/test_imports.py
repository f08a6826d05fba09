"""ddpmctl's modules import each other in one direction: the import graph, read from the source
(without running it), has no cycle, and imports inside functions are kept for heavy modules only."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "ddpmctl"
# Imported inside functions on purpose: each pulls in a heavy library the caller may never need.
LAZY = {
    "ddpmctl.plots": "matplotlib, imported when a plot is drawn",
    "ddpmctl.speed": "diffusers and the profiler, for `bench speed` only",
    "ddpmctl.trackers.tensorboard_events": "tensorboard, an optional extra (pip install \"ddpmctl[tensorboard]\"), once --tracker tensorboard asks for it",
}
# Packages whose modules may import any of ddpmctl inside functions, and why.
LAZY_IMPORTERS = {
    "ddpmctl.cli": "a command imports the library (and torch) when it runs, so that `--help`, `--version` and shell "
                   "completion answer without it; tests/test_cli_face.py checks that no CLI module imports torch",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(ddpmctl module imported, whether the import sits inside a function) for every import."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known and "." in t:  # `import ddpmctl.a.b` names a module; an attribute path does not
                t = t.rpartition(".")[0]
            if t in known and t != name:
                out.append((t, id(node) in nested))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {t for t, _ in imports(path, set(mods))} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan 1972)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert len(edges) > 40 and "ddpmctl.session" in edges["ddpmctl.cli.train"]
    found = cycles(edges)
    assert not found, "import cycles among ddpmctl's modules: " + "; ".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_planted_cycle():
    edges = {k: set(v) for k, v in graph().items()}
    edges["ddpmctl.errors"].add("ddpmctl.cli.train")  # the lowest module importing the highest
    assert any({"ddpmctl.errors", "ddpmctl.cli.train"} <= set(c) for c in cycles(edges))


def test_imports_inside_functions_are_only_for_heavy_modules():
    mods = modules()
    hidden = sorted({f"{name} -> {t}" for name, path in mods.items() for t, inside in imports(path, set(mods))
                     if inside and t not in LAZY and not name.startswith(tuple(p + "." for p in LAZY_IMPORTERS))})
    assert not hidden, "imports inside functions (move them to the top, or add the module to LAZY with the reason): " + ", ".join(hidden)


def test_cli_functions_are_short():
    """The CLI is a thin face over the API: no function in ddpmctl/cli/ reaches 80 lines."""
    long = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 80:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "CLI functions of 80 lines or more: " + ", ".join(long)
