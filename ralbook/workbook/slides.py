"""The lecture export: executed notebooks -> one self-contained HTML page each, and an index page.

Why HTML and not reveal.js: nbconvert's reveal slides load reveal.js from a CDN when viewed, and a lecture
room may have no network; the HTML export with ``embed_images`` inlines every figure and needs nothing at
view time (the few scripts the template would still fetch from a CDN, for MathJax and mermaid, are removed:
:func:`offline`; markdown math then shows as its TeX source). Code cells are left out (``exclude_input``):
a teacher shows what each notebook found; the
notebooks themselves hold the code. A notebook with an error output is refused (named), never exported.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Sequence

from ralbook.errors import RalbookError
from ralbook.files import write_atomic

INDEX_FILE = "index.html"
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S | re.I)


def offline(page: str) -> str:
    """``page`` without the scripts it would fetch from the network (require.js, MathJax, mermaid from a CDN):
    the exported notebooks need none of them to show their text, tables and figures."""
    return _SCRIPT.sub(lambda m: "" if re.search(r"https?://", m.group(0)) else m.group(0), page)


def error_cells(notebook_path: str | os.PathLike) -> list[int]:
    """Indices of the code cells of an executed notebook that hold an error output."""
    import nbformat

    nb = nbformat.read(notebook_path, as_version=4)
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and any(out.get("output_type") == "error" for out in cell.get("outputs", []))]


def notebook_title(notebook_path: str | os.PathLike) -> str:
    """The first markdown heading of a notebook (its title), else its file stem."""
    import nbformat

    nb = nbformat.read(notebook_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return Path(notebook_path).stem


def export_notebook(notebook_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """One executed notebook -> ``out_dir/<stem>.html``: figures embedded, code hidden, no network needed."""
    from nbconvert import HTMLExporter

    src = Path(notebook_path)
    bad = error_cells(src)
    if bad:
        raise RalbookError(f"{src}: cells {bad} hold errors; run the notebook again (make demo) before exporting")
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    body, _ = exporter.from_filename(str(src), resources={"metadata": {"name": notebook_title(src)}})
    body = offline(body)
    out = Path(out_dir) / f"{src.stem}.html"
    write_atomic(out, body)
    return out


def index_page(entries: Sequence[tuple[str, str]]) -> str:
    """An HTML index linking each exported page: ``entries`` are (file name, title)."""
    items = "\n".join(f'<li><a href="{html.escape(name)}">{html.escape(title)}</a></li>' for name, title in entries)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ralbook: the demo notebooks</title>\n"
            "<style>body{font-family:sans-serif;font-size:20px;max-width:50em;margin:2em auto}li{margin:.4em 0}"
            "</style></head>\n<body><h1>ralbook: the demo notebooks</h1>\n"
            "<p>Executed by <code>make demo</code>; code hidden, figures embedded (no network needed).</p>\n"
            f"<ol>\n{items}\n</ol>\n</body></html>\n")


def export_slides(notebooks_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Every executed numbered notebook of ``notebooks_dir`` -> its HTML page in ``out_dir``, plus
    ``index.html``; returns the pages (index last)."""
    src, out = Path(notebooks_dir), Path(out_dir)
    notebooks = sorted(p for p in src.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise RalbookError(f"no executed notebooks (NN_name.ipynb) in {src}: run `make demo` first "
                           "(it writes them to outputs/demo/notebooks)")
    out.mkdir(parents=True, exist_ok=True)
    pages = [export_notebook(nb, out) for nb in notebooks]
    index = out / INDEX_FILE
    write_atomic(index, index_page([(p.name, notebook_title(nb)) for p, nb in zip(pages, notebooks)]))
    return pages + [index]
