"""``ralbook robustness``: the robustness study from the command line."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ralbook.cli.common import DEVICE_HELP, parse_list
from ralbook.errors import RalbookError
from ralbook.runtime.device import resolve_device
from ralbook.files import json_ready, resolve_path
from ralbook.studies.robustness import (StudyPlan, _fmt, comparison_records, findings, run_minutes, run_study,
                                       summarise)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(parse_list(text, float))


def _words(text: str) -> tuple[str, ...]:
    return tuple(parse_list(text))


def add_robustness_arguments(parser: argparse.ArgumentParser) -> None:
    d = StudyPlan()
    parser.add_argument("--cache-dir", default="outputs/robustness", help="runs and collections are cached here")
    parser.add_argument("--ambiguity", default=",".join(f"{a:g}" for a in d.ambiguity),
                        help="shares of ambiguous captions, comma- or space-separated (default %(default)s)")
    parser.add_argument("--noise", default=",".join(d.noise), help="visual noise levels (default %(default)s)")
    parser.add_argument("--models", default=",".join(d.models), help="models (default %(default)s)")
    parser.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="training seeds (default %(default)s)")
    parser.add_argument("--loss-scales", default=",".join(f"{s:g}" for s in d.loss_scales),
                        help="L_PM / L_DA weight multipliers of the sweep (default %(default)s)")
    parser.add_argument("--sweep-terms", default=",".join(d.sweep_terms),
                        help="swept loss terms, pm and/or da; empty: no sweep (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="epochs per run (default %(default)s)")
    parser.add_argument("--n-train", type=int, default=d.n_train, help="training videos per collection")
    parser.add_argument("--n-val", type=int, default=d.n_val, help="validation videos per collection")
    parser.add_argument("--n-test", type=int, default=d.n_test, help="test videos per collection")
    parser.add_argument("--hidden-size", type=int, default=d.hidden_size, help="model width (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="videos per batch (default %(default)s)")
    parser.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="CPU threads per run, part of each run's cache key; 0: chosen once from the load "
                             "(default %(default)s)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--json", help="write the rows, summary and findings to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def plan_from_args(args: argparse.Namespace) -> StudyPlan:
    try:
        plan = StudyPlan(ambiguity=_floats(args.ambiguity), noise=_words(args.noise), models=_words(args.models),
                         seeds=tuple(int(s) for s in _words(args.seeds)), loss_scales=_floats(args.loss_scales),
                         sweep_terms=_words(args.sweep_terms), epochs=args.epochs, n_train=args.n_train,
                         n_val=args.n_val, n_test=args.n_test, hidden_size=args.hidden_size,
                         batch_size=args.batch_size, n_boot=args.n_boot, threads=args.threads)
    except ValueError as err:
        raise RalbookError(f"robustness: a list option holds a non-number ({err})") from err
    plan.validate()
    return plan


def run_robustness(args: argparse.Namespace) -> int:

    plan = plan_from_args(args)
    result = run_study(plan, resolve_path(args.cache_dir), str(resolve_device(args.device)), progress=not args.no_progress)
    summary = summarise(result.rows)
    print(f"{len(result.rows)} runs: {result.trained} trained, {result.cached} read from the cache; the distinct runs "
          f"took {run_minutes(result.rows):.1f} minutes when they were made")
    print(f"{'setting':<34}{'model':<18}{'SumR':>16}{'chance':>8}{'sigma AUC':>18}")
    for s in summary:
        setting = (f"amb {s['ambiguity']:g} noise {s['noise']}" + (f" L_{s['term'].upper()} x{s['scale']:g}"
                                                                    if s["term"] else ""))
        print(f"{setting:<34}{s['label']:<18}{_fmt(s['sumr_mean'], s['sumr_std']):>16}"
              f"{'n/a' if s['chance_sumr'] is None else format(s['chance_sumr'], '.1f'):>8}{_fmt(s['caption_auc_mean'], s['caption_auc_std'], 3):>18}")
    lines = findings(result.rows)
    print("\n".join(lines))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_ready({"plan": dataclasses.asdict(plan), "rows": result.rows,
                                              "summary": summary,
                                              "comparisons": comparison_records(result.rows), "findings": lines}), indent=1) + "\n")
    return 0
