"""The notebooks in examples/notebooks/ run top to bottom (nbclient, a fresh kernel), in a
temporary folder, and their own assertions hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((REPO / "examples" / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook():
    assert NOTEBOOKS, "examples/notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("DDPMCTL_")]:
        monkeypatch.delenv(var)  # the kernel inherits the environment: no stray settings
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "config.json").is_file() and list((runs[0] / "checkpoints").glob("*.safetensors"))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "W2" in text and "dpm-solver++" in text
