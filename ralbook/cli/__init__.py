"""Command line: ``python -m ralbook {inspect,make-demo,train,evaluate,index,...} ...``.

One thin module per command under ``ralbook.cli``; each exposes ``add_<name>_arguments(parser)``
and ``run_<name>(args) -> int``. The commands sit on top of every other layer and hold all the
argparse code; the domain modules below them never parse arguments.
Errors a user can fix are printed as one line and give exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from ralbook.cli import (compare, demo, evaluate, extract, figures, index, inspect, make_demo, robustness, search,
                         sigma_report, slides, train, uncertainty)
from ralbook import __version__
from ralbook.errors import RalbookError
from ralbook.runtime import threads as runtime

# sub-command -> (module, one-line help, what it reads and writes); the module provides add_<name>_arguments
# and run_<name>
COMMANDS: dict[str, tuple[ModuleType, str, str]] = {
    "inspect": (inspect, "validate a collection and print its summary",
                "Reads ROOT/COLLECTION (captions, text and frame features); writes nothing."),
    "make-demo": (make_demo, "regenerate the bundled demo collection",
                  "Writes the synthetic demo collection (default data/demo)."),
    "train": (train, "train a model into a run directory",
              "Reads a collection; writes RUN_DIR/config.json, metrics.jsonl, steps.csv, best.pt, last.pt and "
              "test_metrics.json."),
    "evaluate": (evaluate, "evaluate a checkpoint on a split",
                 "Reads a checkpoint (or run directory), a collection, optionally a relevance file and an index; "
                 "prints R@1/5/10/100 and SumR with a chance row; writes --json when given."),
    "index": (index, "encode a split's videos once into an index folder",
              "Reads a checkpoint and a collection; writes an index folder (manifest.json, model.pt, *.npy) for "
              "two-stage retrieval."),
    "sigma-report": (sigma_report, "AUC of a model's sigma for ambiguity labels, with baselines",
                     "Reads a checkpoint, a collection and a label file; prints the report; writes --json."),
    "uncertainty": (uncertainty, "the uncertainty benchmark: failure prediction, ambiguity and calibration",
                    "Reads a checkpoint (or run directory), optional ensemble members, label files or an index; prints "
                    "one table (method x question, 95% intervals); writes --json and the curves' PNGs."),
    "robustness": (robustness, "the robustness study: models x ambiguity x noise",
                   "Reads the demo generator's settings; writes cached runs and a results table under --out."),
    "demo": (demo, "the main job: train on the demo data and run all notebooks",
             "Reads data/demo; writes outputs/demo/ (the run ral_demo, executed notebooks, results.json)."),
    "extract": (extract, "turn video files and captions into a collection of CLIP features",
                "Reads video files and a captions file; writes a collection folder with extract.json."),
    "search": (search, "rank a collection's videos for a query (free text or a stored caption)",
               "Reads a checkpoint, a collection or an index folder; prints the best videos with their moments."),
    "figures": (figures, "rerun the main job and rewrite the curated figures",
                "Runs the demo job, then writes figures/ and figures/RESULTS.md."),
    "slides": (slides, "the executed notebooks as self-contained HTML pages for a lecture",
               "Reads executed notebooks (default outputs/demo/notebooks); writes one HTML page each and an index."),
    "compare": (compare, "runs side by side: paired differences with intervals, seeds grouped",
                "Reads run directories (their stored per-query ranks or best.pt) and a collection; prints the table; "
                "writes --csv, --latex, --json."),
}
THREADED = ("train", "evaluate", "demo")  # sub-commands that take --threads (see ralbook.runtime.threads)


def _attr(name: str) -> str:
    return name.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ralbook", description="ralbook: robust alignment learning for partially relevant video retrieval. "
                                    "Run `python -m ralbook COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"ralbook {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name, (module, help_text, reads_writes) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=f"{help_text[0].upper()}{help_text[1:]}. {reads_writes}")
        getattr(module, f"add_{_attr(name)}_arguments")(p)
        if name in THREADED:
            p.add_argument("--threads", default=None, metavar="N",
                           help="CPU threads (default: the cores not busy with other work; also RALBOOK_THREADS)")
    return parser


def apply_threads(args: argparse.Namespace) -> None:
    """--threads N (or RALBOOK_THREADS, or the load) sets this process's threads; notebook kernels inherit N."""
    if args.command not in THREADED or getattr(args, "print_config", False):
        return
    if runtime.parse_threads(args.threads, "--threads") is not None:
        os.environ[runtime.ENV_THREADS] = str(args.threads)
    runtime.configure_threads(args.threads, source="--threads")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded with results (ralbook.runtime.provenance)
    module = COMMANDS[args.command][0]
    try:
        apply_threads(args)
        return int(getattr(module, f"run_{_attr(args.command)}")(args) or 0)
    except RalbookError as err:
        print(f"ralbook {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"ralbook {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ralbook {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
