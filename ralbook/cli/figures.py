"""``ralbook figures``: run the main job, then rewrite the curated figures/ and figures/RESULTS.md."""
from __future__ import annotations

import argparse
import json

from ralbook.cli.demo import add_demo_arguments
from ralbook.files import repo_root, resolve_path
from ralbook.workbook.pipeline import DEMO_RUN_NAME, run_demo
from ralbook.workbook.results import (FIGURES_DIR, RESULTS_FILE, RESULTS_MD, curate_figures, results_markdown,
                                      write_results)


def add_figures_arguments(parser: argparse.ArgumentParser) -> None:

    add_demo_arguments(parser)
    parser.add_argument("--to", default=FIGURES_DIR, help="the curated folder to rewrite (default: figures)")


def run_figures(args: argparse.Namespace) -> int:
    """Run the main job (reusing its run), then rewrite figures/ and figures/RESULTS.md from what it wrote."""

    root = repo_root()
    out = resolve_path(args.out, root)
    target = resolve_path(args.to, root)
    figures_dir = resolve_path(args.figures, root) if args.figures else out / "figures"
    for stale in figures_dir.glob("*.png"):  # only this run's figures may reach the curated folder
        stale.unlink()
    status = run_demo(args)
    names = curate_figures(figures_dir, target, (DEMO_RUN_NAME, "demo"))
    results = json.loads((out / RESULTS_FILE).read_text(encoding="utf-8"))
    write_results(target / RESULTS_FILE, results)
    (target / RESULTS_MD).write_text(results_markdown(results, names), encoding="utf-8")
    print(f"curated figures and {RESULTS_MD} written to {target} ({len(names)} PNGs)")
    return status
