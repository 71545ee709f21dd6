"""The notebooks (jupytext percent scripts) run top to bottom in quick mode and save figures, as
scripts and, with the ipykernel and nbconvert of requirements.txt, in a Jupyter kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"

# Figures each notebook saves, and a pattern of its printed output that carries a checked number.
EXPECTED = {
    "01_gait_data": (
        ["casiab_trees.png", "pxk_batch.png", "sequence_lengths.png"],
        r"missing ids: 47 ",
    ),
    "02_models": (
        ["metagait_mhn_weights.png", "dr50_routing_weights.png"],
        r"total +3,132,000 +3,132,000\n",
    ),
    "03_results": (
        ["casiab_heatmap.png", "reid_cmc.png", "retrieval_examples.png"],
        r"synD: 8 queries, 10 gallery",
    ),
}


def quick_mode_env(out_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "METAREID_NOTEBOOK_QUICK": "1",
        "METAREID_NOTEBOOK_OUT": str(out_dir),
        "PROJECT_ROOT": str(REPO),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
    }


def run_notebook(name: str, out_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = quick_mode_env(out_dir)
    return subprocess.run(
        [sys.executable, str(NOTEBOOKS / f"{name}.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_notebook_is_covered():
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_in_quick_mode_and_saves_its_figures(name, tmp_path):
    out_dir = tmp_path / "out"
    completed = run_notebook(name, out_dir, cwd=tmp_path)

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    figures, marker = EXPECTED[name]
    for figure in figures:
        with Image.open(out_dir / figure) as image:
            assert image.format == "PNG" and min(image.size) > 100, figure
    assert re.search(marker, completed.stdout), marker
    # Everything stays under the output folder: nothing is written where the notebook ran.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_converts_to_ipynb(name):
    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")

    assert notebook.metadata["kernelspec"]["name"] == "python3"
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown" and kinds.count("code") >= 4 and kinds.count("markdown") >= 3
    nbformat.validate(nbformat.reads(jupytext.writes(notebook, fmt="ipynb"), as_version=4))


def test_a_notebook_executes_in_a_jupyter_kernel(tmp_path):
    """`jupytext --execute` (nbconvert executor, ipykernel kernel) runs 02 and keeps its outputs."""
    executed = tmp_path / "02_models.ipynb"
    completed = subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "ipynb", "--execute"]
        + [str(NOTEBOOKS / "02_models.py"), "-o", str(executed)],
        cwd=tmp_path,
        env=quick_mode_env(tmp_path / "out"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    notebook = nbformat.read(executed, as_version=4)
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    figures, marker = EXPECTED["02_models"]
    assert re.search(marker, printed), marker
    assert all((tmp_path / "out" / figure).is_file() for figure in figures)
