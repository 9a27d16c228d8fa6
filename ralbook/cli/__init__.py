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
from ralbook.errors import RalbookError
from ralbook.runtime import threads as runtime

# sub-command -> (module, help text); the module provides add_<name>_arguments and run_<name>
COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "inspect": (inspect, "validate a collection and print its summary"),
    "make-demo": (make_demo, "(re)generate the bundled demo collection"),
    "train": (train, "train a model"),
    "evaluate": (evaluate, "evaluate a checkpoint"),
    "index": (index, "encode a split's videos once into an index folder (two-stage retrieval)"),
    "sigma-report": (sigma_report, "AUC of a model's sigma for ambiguity labels, with baselines"),
    "uncertainty": (uncertainty, "the uncertainty benchmark: failure prediction, ambiguity and calibration of "
                                 "every method, with intervals"),
    "robustness": (robustness, "the robustness study: models x ambiguity x noise, cached runs"),
    "demo": (demo, "the main job: train on the demo data and run all notebooks"),
    "extract": (extract, "video files (+ captions) -> a collection of CLIP features"),
    "search": (search, "rank a collection's videos for a free-text query"),
    "slides": (slides, "the executed notebooks as self-contained HTML pages for a lecture (no Jupyter needed)"),
    "figures": (figures, "run the main job, then rewrite the curated figures/ and figures/RESULTS.md"),
    "compare": (compare, "runs side by side: paired differences with intervals, seeds grouped; CSV/LaTeX"),
}
THREADED = ("train", "evaluate", "demo")  # sub-commands that take --threads (see ralbook.runtime.threads)


def _attr(name: str) -> str:
    return name.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ralbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        getattr(module, f"add_{_attr(name)}_arguments")(p)
        if name in THREADED:
            p.add_argument("--threads", default=None, metavar="N",
                           help="CPU threads (default: the cores not busy with other work; also RALBOOK_THREADS)")
    return parser


def apply_threads(args: argparse.Namespace) -> None:
    """--threads N (or RALBOOK_THREADS, or the load) sets this process's threads; notebook kernels inherit N."""
    if args.command not in THREADED:
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
