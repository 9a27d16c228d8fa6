"""What a user sees in the console while notebooks run: the notebook's outcome, not the kernel's log."""
from __future__ import annotations

import nbformat
import pytest

from ralbook.workbook.pipeline import run_notebook


@pytest.mark.slow
def test_running_a_notebook_prints_no_kernel_warnings(tmp_path, capfd):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x * 2)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    out = run_notebook(tmp_path / "tiny.ipynb", tmp_path / "out.ipynb", {"x": 21})
    assert nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"] == "42\n"
    err = capfd.readouterr().err  # the kernel process writes its log to this process's stderr
    assert "without encryption" not in err and "IPKernelApp" not in err
