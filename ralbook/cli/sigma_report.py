"""``ralbook sigma-report``: AUC of a model's sigma for ambiguity labels, with baselines."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ralbook.cli.common import add_data_arguments, load_for_command
from ralbook.errors import RalbookError
from ralbook.runtime.provenance import PROVENANCE_KEY
from ralbook.studies.uncertainty import (DEFAULT_BOOTSTRAP, DEFAULT_TEMPERATURE, LEVELS, format_report,
                                         labels_for_split, model_outputs, sigma_report)


def add_sigma_report_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--checkpoint", required=True, help="a ralbook run directory or its best.pt/last.pt")
    parser.add_argument("--split", default="test", help="caption file analysed (default test)")
    parser.add_argument("--labels", required=True,
                        help="TSV lines 'CAPTION_ID<TAB>LABEL' or 'VIDEO_ID<TAB>LABEL' (1 ambiguous, 0 specific)")
    parser.add_argument("--level", choices=LEVELS, default=None,
                        help="caption (default for caption labels), support_set or video (default for video labels)")
    parser.add_argument("--json", help="write the report to this JSON file")
    parser.add_argument("--n-boot", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help="softmax temperature of the entropy baseline (default 1/32)")
    add_data_arguments(parser)


def run_sigma_report(args: argparse.Namespace) -> int:

    if args.n_boot < 1 or not (math.isfinite(args.temperature) and args.temperature > 0):
        raise RalbookError(f"need --n-boot >= 1 and --temperature > 0, got {args.n_boot} and {args.temperature}")
    loaded = load_for_command(args)
    cfg, model, collection = loaded.cfg, loaded.model, loaded.collection
    if not cfg.model.msra:
        raise RalbookError(f"{args.checkpoint} was trained without MSRA (model.msra=false): it has no sigma")
    labels = labels_for_split(args.labels, collection, args.split)
    outputs = model_outputs(model, collection, args.split, cfg, progress=not args.no_progress)
    result = sigma_report(outputs, labels, args.level, args.n_boot, args.seed, args.temperature)
    print(format_report(result, title=f"sigma report: {cfg.data.collection} {args.split}, {args.checkpoint}, "
                                      f"labels {args.labels}"))
    if args.json:
        result[PROVENANCE_KEY] = loaded.provenance(
            args, split=args.split, labels=args.labels, n_boot=args.n_boot, seed=args.seed,
            extra={"level": result.get("level", args.level), "temperature": args.temperature})
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0
