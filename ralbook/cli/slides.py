"""``ralbook slides``: the executed demo notebooks as self-contained HTML pages (ralbook.workbook.slides)."""
from __future__ import annotations

import argparse

from ralbook.workbook.slides import export_slides


def add_slides_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--notebooks", default="outputs/demo/notebooks",
                        help="folder of executed notebooks (default: outputs/demo/notebooks, where make demo writes)")
    parser.add_argument("--out", default="outputs/slides", help="folder for the HTML pages (default: outputs/slides)")


def run_slides(args: argparse.Namespace) -> int:
    """Export, then say where the index is."""
    pages = export_slides(args.notebooks, args.out)
    print(f"{len(pages) - 1} pages; open {pages[-1]}")
    return 0
