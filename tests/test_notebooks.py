"""Every notebook in notebooks/ runs top to bottom on the embedded models (small sizes), in a kernel that is
this venv's Python. Notebooks are stored without outputs so diffs stay readable."""

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# A hang guard, not a budget: one cell takes under a minute on 2 idle cores, several times that when the
# machine is shared.
CELL_TIMEOUT = 480


def test_notebooks_found_and_stored_without_outputs():
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("STEERLENS_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger warns on frozen modules
    nb = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
    probe["id"] = "steerlens-kernel-probe"
    nb.cells.insert(0, probe)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",  # ipykernel's own spec: launched with this interpreter, nothing registered
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},  # cwd of the kernel: files land in tmp_path
    )
    start = time.perf_counter()
    try:
        client.execute()
    except (nbclient.exceptions.CellExecutionError, nbclient.exceptions.CellTimeoutError) as e:
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
    took = time.perf_counter() - start
    kernel_python = nb.cells[0].outputs[0]["text"].strip()
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable), (
        f"the kernel ran {kernel_python}, not this venv's {sys.executable}; a user-level 'python3' kernelspec "
        "may shadow ipykernel's (see `jupyter kernelspec list`)"
    )
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    print(f"{path.name}: {took:.0f} s")
