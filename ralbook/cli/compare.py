"""``ralbook compare``: runs side by side, paired differences with intervals, seeds grouped; CSV / LaTeX / JSON."""
from __future__ import annotations

import argparse
from pathlib import Path

from ralbook.files import write_atomic, write_json
from ralbook.runtime.progress import use_bars
from ralbook.runtime.provenance import PROVENANCE_KEY, file_record, result_provenance
from ralbook.stats import N_BOOT
from ralbook.studies.compare import compare_runs, format_comparison, to_csv, to_json, to_latex
from ralbook.training.rundir import BEST_FILE


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Reads each RUN_DIR's config.json and per-query ranks (test_metrics.json, else best.pt "
                          "evaluated on --split); prints the metrics side by side with each run's paired "
                          "difference to the first run; runs differing only by seed are grouped.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; the first is the reference")
    parser.add_argument("--split", default="test", help="caption file compared (default test)")
    parser.add_argument("--csv", metavar="FILE", help="write the side-by-side table as CSV")
    parser.add_argument("--latex", metavar="FILE", help="write a booktabs LaTeX table (fused scores)")
    parser.add_argument("--json", metavar="FILE", help="write everything (differences, seed groups, provenance)")
    parser.add_argument("--evaluate", action="store_true",
                        help="evaluate every best.pt even when the run stores its per-query ranks")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--device", default="cpu", help="device for evaluations (default cpu)")
    parser.add_argument("--data-root", default="", help="folder holding the collection, for evaluations")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_compare(args: argparse.Namespace) -> int:
    comp = compare_runs(args.runs, args.split, reuse=not args.evaluate, device=args.device, data_root=args.data_root,
                        n_boot=args.n_boot, seed=args.seed, progress=not args.no_progress and use_bars())
    print(format_comparison(comp))
    if args.csv:
        write_atomic(Path(args.csv), to_csv(comp))
    if args.latex:
        write_atomic(Path(args.latex), to_latex(comp))
    if args.json:
        out = to_json(comp)
        out[PROVENANCE_KEY] = result_provenance(split=args.split, n_boot=args.n_boot, seed=args.seed,
                                                argv=getattr(args, "argv", None),
                                                extra={"checkpoints": [file_record(Path(r) / BEST_FILE) for r in args.runs]})
        write_json(Path(args.json), out, indent=1)
    return 0
