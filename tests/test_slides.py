"""The lecture export (``ralbook slides``): pages a browser shows offline, with figures and no error cells.

The browser check renders the page with headless Chromium (skipped, saying why, where no chromium binary
exists; .ci/run installs Debian's ``chromium``)."""
from __future__ import annotations

import shutil
import subprocess

import nbformat
import pytest

from ralbook.cli import main
from ralbook.errors import RalbookError
from ralbook.workbook import pipeline, slides

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _executed(tmp_path, error: bool = False):
    """A small notebook with a title, a figure and a conclusion, executed headlessly like the demo's."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    code = ("import matplotlib.pyplot as plt\nfrom IPython.display import Markdown, display\n"
            "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\nplt.show()\n"
            "display(Markdown('**What this shows**: a line.'))")
    if error:
        code += "\nraise ValueError('broken')"
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · A tiny notebook\n\nText."),
                nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code)]
    src = tmp_path / "src.ipynb"
    nbformat.write(nb, src)
    out = tmp_path / "executed" / "01_tiny.ipynb"
    if error:  # an executed copy holding an error, as papermill saves it
        with pytest.raises(RalbookError):
            pipeline.run_notebook(src, out)
        return out
    return pipeline.run_notebook(src, out)


@pytest.mark.slow
def test_slides_export_pages_and_index(tmp_path, capsys):
    _executed(tmp_path)
    assert main(["slides", "--notebooks", str(tmp_path / "executed"), "--out", str(tmp_path / "slides")]) == 0
    page = (tmp_path / "slides" / "01_tiny.html").read_text()
    assert "data:image/png;base64," in page  # the figure is inside the page
    assert "https://" not in "".join(slides._SCRIPT.findall(page))  # nothing fetched at view time
    assert "x = 1" not in page  # code hidden
    index = (tmp_path / "slides" / "index.html").read_text()
    assert 'href="01_tiny.html"' in index and "01 · A tiny notebook" in index


@pytest.mark.slow
def test_a_notebook_with_an_error_is_not_exported(tmp_path):
    bad = _executed(tmp_path, error=True)
    bad_cells = slides.error_cells(bad)
    assert len(bad_cells) == 1  # the raising cell (papermill adds cells around it, so no fixed index)
    with pytest.raises(RalbookError, match=rf"cells \[{bad_cells[0]}\] hold errors"):
        slides.export_slides(bad.parent, tmp_path / "slides")


def test_no_executed_notebooks_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(RalbookError, match="make demo"):
        slides.export_slides(tmp_path, tmp_path / "slides")


def test_offline_drops_only_network_scripts():
    page = ('<script src="https://cdn/x.js"></script><script>var a = 1;</script>'
            '<script type="module">await import("https://cdn/m.mjs")</script>')
    assert slides.offline(page) == "<script>var a = 1;</script>"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run does)")
def test_exported_page_renders_in_headless_chromium(tmp_path):
    _executed(tmp_path)
    page = slides.export_slides(tmp_path / "executed", tmp_path / "slides")[0]
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1600"]
    dom = subprocess.run(args + ["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert dom.count("<img") > 0 and "data:image/png;base64," in dom
    assert "jp-RenderedText" in dom or "What this shows" in dom
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in dom and "Traceback" not in dom
    shot = tmp_path / "page.png"
    subprocess.run(args + [f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
