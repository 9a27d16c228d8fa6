"""``ralbook evaluate``: metrics of a checkpoint (exhaustive, or two-stage with --index)."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from ralbook.checkpoint import model_from_checkpoint
from ralbook.cli.common import add_data_arguments, apply_data_arguments
from ralbook.config import PRESETS, require_data_root
from ralbook.data.collection import Collection, check_dims
from ralbook.retrieval.evaluate import evaluate, format_metrics
from ralbook.retrieval.index import Index, IndexFolderError, evaluate_index
from ralbook.retrieval.metrics import read_relevant_file
from ralbook.runtime.device import resolve_device
from ralbook.runtime.precision import describe_amp
from ralbook.runtime.progress import use_bars


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="best.pt/last.pt of a run, or the authors' checkpoint")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="configuration of an authors' checkpoint (ralbook checkpoints carry their own)")
    parser.add_argument("--split", default="test", help="caption file to evaluate (default test)")
    parser.add_argument("--relevant", help="optional file: caption id -> relevant video ids (JSON or text lines)")
    parser.add_argument("--json", help="write metrics and per-query ranks / top-10 ids to this JSON file")
    parser.add_argument("--index", help="two-stage retrieval over this index folder (see `ralbook index`)")
    parser.add_argument("--rerank", type=int, default=200, metavar="K",
                        help="with --index: fused score for the K best videos of the clip-scale stage")
    add_data_arguments(parser)


def run_evaluate(args: argparse.Namespace) -> int:

    cfg, model, kind = model_from_checkpoint(args.checkpoint, args.preset,
                                             adjust=lambda c: apply_data_arguments(c, args))
    if kind == "ralbook" and args.preset:
        warnings.warn(f"{args.checkpoint} carries its own configuration; --preset {args.preset} is ignored")
    device = resolve_device(cfg.train.device)
    require_data_root(cfg)
    collection = Collection.from_config(cfg.data)
    check_dims(cfg, collection)
    model.to(device)
    if getattr(args, "index", None):

        return run_index_evaluation(args, model, cfg, collection)
    print(describe_amp(cfg.train.amp, device), flush=True)

    result = evaluate(model, collection, args.split, cfg, device, relevant=args.relevant,
                      progress=not args.no_progress and use_bars(),  # no bars in log files
                      source=f"checkpoint {args.checkpoint}")
    print(format_metrics(result, title=f"{cfg.data.collection} {args.split}: {len(result.cap_ids)} queries x "
                                       f"{len(result.video_ids)} videos ({kind} checkpoint {args.checkpoint})"))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=1))
    return 0


def run_index_evaluation(args: argparse.Namespace, model: Any, cfg: Any, collection: Any) -> int:
    """``evaluate --index DIR --rerank K``: two-stage ranking with the model of --checkpoint."""

    index = Index.open(args.index, model=model, device=next(model.parameters()).device)
    print(describe_amp(index.amp, index.device, setting="the index's train.amp"), flush=True)
    if index.manifest["split"] != args.split:
        raise IndexFolderError(f"{args.index} indexes split {index.manifest['split']!r}, not {args.split!r}")
    extra = read_relevant_file(args.relevant) if args.relevant else None
    result, missed = evaluate_index(index, collection, args.split, args.rerank, relevant=extra,
                                    progress=not args.no_progress)
    n = len(result.cap_ids)
    print(format_metrics(result, title=f"{cfg.data.collection} {args.split}: {n} queries x {len(index)} videos, "
                                       f"two-stage (clip-scale top {args.rerank}, then fused)"))
    print(f"{missed} of {n} queries ({100.0 * missed / n:.1f}%) have no relevant video among the first-stage top "
          f"{args.rerank}; such a video keeps its first-stage rank (> {args.rerank})")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result.to_json(), "rerank": args.rerank, "outside_rerank": missed}, indent=1))
    return 0
