"""The tutorial notebook runs from top to bottom, and is stored without outputs."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "walkthrough.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for number, cell in enumerate(code, start=1):
        assert cell.outputs == [], f"code cell {number} has outputs: strip them before committing"
        assert cell.execution_count is None, f"code cell {number} has an execution count: strip it"


def test_notebook_executes(tmp_path):
    """Every cell runs without error in a fresh kernel, outside the repository."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    text = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream"
    )
    assert "status: converged" in text
    assert "notebook ran in" in text
    figures = sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert figures >= 8, f"expected the notebook's figures inline, got {figures}"
