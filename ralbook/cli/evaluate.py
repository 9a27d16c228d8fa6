"""``ralbook evaluate``: metrics of a checkpoint (exhaustive, or two-stage with --index)."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from ralbook.cli.common import DEFAULT_RERANK, RERANK_HELP, Loaded, add_data_arguments, load_for_command, preset_argument
from ralbook.data.collection import video_of
from ralbook.errors import ConfigError
from ralbook.files import json_ready, write_json
from ralbook.retrieval.evaluate import evaluate, format_metrics
from ralbook.retrieval.index import Index, IndexFolderError, evaluate_index
from ralbook.retrieval.metrics import GroundTruth, chance_metrics, check_relevance, read_relevant_file, relevant_indices
from ralbook.runtime.environment import environment_record
from ralbook.runtime.precision import describe_amp, resolve_amp
from ralbook.runtime.progress import use_bars


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory (its best.pt), a best.pt/last.pt, or the authors' checkpoint")
    preset_argument(parser)
    parser.add_argument("--split", default="test", help="caption file to evaluate (default test)")
    parser.add_argument("--relevant", help="optional file: caption id -> relevant video ids (JSON or text lines)")
    parser.add_argument("--json", help="write metrics, ground truth, provenance and per-query ranks to this file")
    parser.add_argument("--index", help="two-stage retrieval over this index folder (see `ralbook index`)")
    parser.add_argument("--rerank", type=int, default=None, metavar="K", help=RERANK_HELP)
    add_data_arguments(parser)


def ground_truth(args: argparse.Namespace, cap_ids: list[str]) -> tuple[Optional[dict[str, list[str]]], GroundTruth]:
    """--relevant read and checked against the split's captions; a warning when it covers only some of them."""
    if not args.relevant:
        return None, check_relevance(None, cap_ids, args.split)
    extra = read_relevant_file(args.relevant)
    truth = check_relevance(extra, cap_ids, args.split, source=args.relevant)
    if truth.covered < truth.n_captions or truth.unknown:
        print(f"warning: {args.relevant} gives relevance lists for {truth.covered} of the {truth.n_captions} "
              f"captions of split {args.split!r} (the others are scored against their own video)"
              + (f"; {truth.unknown} of its ids are no caption of this split" if truth.unknown else ""),
              file=sys.stderr)
    return extra, truth


def chance_row(collection: Any, split: str, cap_ids: list[str], video_ids: list[str],
               extra: Optional[dict[str, list[str]]]) -> dict[str, float]:
    """Expected metrics of a random ranking under the ground truth actually used."""
    rel = relevant_indices(cap_ids, [video_of(c) for c in cap_ids], video_ids, extra)
    return chance_metrics((rel >= 0).sum(dim=1).tolist(), len(video_ids))


def provenance(loaded: Loaded, args: argparse.Namespace) -> dict[str, Any]:
    """What produced the numbers: checkpoint and its hash, split, relevance file, precision, versions."""
    precision = resolve_amp(loaded.cfg.train.amp, loaded.device)
    return {**loaded.provenance(), "split": args.split, "relevant_file": args.relevant, "index": args.index,
            "rerank": args.rerank if args.index else None, "data_root": loaded.cfg.data.data_root,
            "collection": loaded.cfg.data.collection, "feature": loaded.cfg.data.feature,
            "overrides": list(args.overrides or []),
            "environment": environment_record(precision, str(loaded.device))}


def run_evaluate(args: argparse.Namespace) -> int:
    if args.rerank is not None and not args.index:
        raise ConfigError("--rerank K applies to two-stage retrieval only: add --index DIR (built by "
                          "`ralbook index`), or drop --rerank for the exhaustive evaluation")
    if args.rerank is not None and args.rerank < 1:
        raise ConfigError(f"--rerank must be >= 1, got {args.rerank}")
    loaded = load_for_command(args)
    if loaded.kind == "ralbook" and args.preset:
        warnings.warn(f"{args.checkpoint} carries its own configuration; --preset {args.preset} is ignored")
    if args.index:
        args.rerank = args.rerank or DEFAULT_RERANK
        return run_index_evaluation(args, loaded)
    cfg, collection = loaded.cfg, loaded.collection
    print(describe_amp(cfg.train.amp, loaded.device), flush=True)
    cap_ids = [c for c, _ in collection.captions(args.split)]
    extra, truth = ground_truth(args, cap_ids)
    result = evaluate(loaded.model, collection, args.split, cfg, loaded.device, relevant=extra,
                      progress=not args.no_progress and use_bars(),  # no bars in log files
                      source=f"checkpoint {loaded.checkpoint}")
    chance = chance_row(collection, args.split, result.cap_ids, result.video_ids, extra)
    print(format_metrics({**result.metrics, "chance": chance},
                         title=f"{cfg.data.collection} {args.split}: {len(result.cap_ids)} queries x "
                               f"{len(result.video_ids)} videos ({loaded.kind} checkpoint {loaded.checkpoint})\n"
                               f"{truth.describe()}"))
    if args.json:
        write_result(args.json, {**result.to_json(), "chance": chance, "ground_truth": truth.to_json(),
                                 "provenance": provenance(loaded, args)})
    return 0


def write_result(path: str, record: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, json_ready(record), indent=1)


def run_index_evaluation(args: argparse.Namespace, loaded: Loaded) -> int:
    """``evaluate --index DIR --rerank K``: two-stage ranking with the model of --checkpoint. Its frame row is
    not the frame branch's ranking (only the first stage's K candidates are re-ordered by frame score), so it
    is printed as ``frame@K`` with that said."""
    cfg, collection, k = loaded.cfg, loaded.collection, args.rerank
    index = Index.open(args.index, model=loaded.model, device=loaded.device)
    print(describe_amp(index.amp, index.device, setting="the index's train.amp"), flush=True)
    if index.manifest["split"] != args.split:
        raise IndexFolderError(f"{args.index} indexes split {index.manifest['split']!r}, not {args.split!r}")
    cap_ids = [c for c, _ in collection.captions(args.split)]
    extra, truth = ground_truth(args, cap_ids)
    result, missed = evaluate_index(index, collection, args.split, k, relevant=extra,
                                    progress=not args.no_progress and use_bars())
    n = len(result.cap_ids)
    label = f"frame@{k}"
    table = {(label if kind == "frame" else kind): v for kind, v in result.metrics.items()}
    chance = chance_row(collection, args.split, result.cap_ids, result.video_ids, extra)
    print(format_metrics({**table, "chance": chance},
                         title=f"{cfg.data.collection} {args.split}: {n} queries x {len(index)} videos, "
                               f"two-stage (clip-scale top {k}, then fused)\n{truth.describe()}"))
    print(f"{label}: the clip stage's top {k} re-ordered by frame score, the rest in clip order; not the "
          "frame branch's own ranking (compare it with the exhaustive evaluation's frame row only with care)")
    print(f"{missed} of {n} queries ({100.0 * missed / n:.1f}%) have no relevant video among the first-stage top "
          f"{k}; such a video keeps its first-stage rank (> {k})")
    if args.json:
        record = result.to_json()
        record["metrics"] = table
        write_result(args.json, {**record, "chance": chance, "ground_truth": truth.to_json(), "rerank": k,
                                 "outside_rerank": missed, "provenance": provenance(loaded, args)})
    return 0
