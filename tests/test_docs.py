"""The documentation agrees with the code.

- docs/config.md and docs/cli.md are generated (ddpmctl/docsgen.py) and must be current.
  Regenerate them with:  UPDATE_DOCS=1 pytest tests/test_docs.py
- Every relative link in README.md and docs/*.md points at a file that exists, and every link
  to a Python file whose text names a symbol (`q_sample`, `Schedule.beta_tilde`) names one
  that is defined there.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from ddpmctl import docsgen
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GENERATED = {"config.md": docsgen.config_reference, "cli.md": docsgen.cli_reference, "api.md": docsgen.api_reference}
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
SYMBOL = re.compile(r"^`([A-Za-z_][\w.]*)(?:\(\))?`$")


@pytest.mark.parametrize("page", sorted(GENERATED))
def test_generated_reference_is_current(page):
    text = GENERATED[page]()
    path = REPO / "docs" / page
    if os.environ.get("UPDATE_DOCS"):
        path.write_text(text)
    assert path.is_file() and path.read_text() == text, (
        f"docs/{page} is out of date with the code: run {docsgen.REGENERATE}"
    )


def test_config_reference_lists_every_setting():
    from ddpmctl.config import TrainSettings

    text = docsgen.config_reference()
    for name in TrainSettings.model_fields:
        assert f"DDPMCTL_{name.upper()}" in text, name


def test_cli_reference_lists_every_command():
    import typer.main

    from ddpmctl.cli import app

    text = docsgen.cli_reference()
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        assert f"## ddpmctl {name}" in text
        for sub in getattr(cmd.load(), "commands", {}) or {}:  # the root knows its commands by name until loaded
            assert f"## ddpmctl {name} {sub}" in text


def test_every_registered_metric_is_explained():
    from ddpmctl import registry

    text = (REPO / "docs" / "metrics.md").read_text()
    builtin = [e.name for e in registry.entries("metric") if e.value.startswith("ddpmctl.")]
    missing = [name for name in builtin if f"`{name}`" not in text]
    assert not missing, f"docs/metrics.md does not explain {missing}"


def _links(page: Path) -> list[tuple[int, str, str]]:
    out = []
    in_fence = False
    for lineno, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for text, target in LINK.findall(line):
            out.append((lineno, text, target))
    return out


def _defined(tree: ast.Module, dotted: str) -> bool:
    """Whether `name` or `Class.member` is defined at the top of a module (or in that class)."""
    scope: list[ast.stmt] = tree.body
    for part in dotted.split("."):
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == part for t in node.targets):
                found = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == part:
                found = node
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_resolve(page):
    bad = []
    for lineno, text, target in _links(page):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # web links and anchors in the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            bad.append(f"{page.name}:{lineno}: {target} does not exist")
            continue
        m = SYMBOL.match(text.strip())
        if path.suffix == ".py" and m and not m.group(1).endswith(".py"):  # `file.py` names the file
            if not _defined(ast.parse(path.read_text()), m.group(1)):
                bad.append(f"{page.name}:{lineno}: {m.group(1)} is not defined in {target}")
    assert not bad, "\n".join(bad)


def test_math_names_the_code_of_its_equations():
    """docs/math.md links each equation to its code: at least the core functions are named."""
    text = (REPO / "docs" / "math.md").read_text()
    named = {m.group(1) for _, t, target in _links(REPO / "docs" / "math.md") if target.endswith(".py") and (m := SYMBOL.match(t))}
    for must in ("q_sample", "q_posterior", "DiffusionLoss", "eps_x0_from_output", "learned_log_variance",
                 "Schedule.beta_tilde", "cosine", "ddpm", "ddim", "dpm_solver_pp", "heun", "frechet_distance"):
        assert must in named, f"docs/math.md does not link {must}"
    assert "$$" in text
