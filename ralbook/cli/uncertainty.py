"""``ralbook uncertainty``: the uncertainty benchmark of one model (issue 23).

For every method (free baselines, RAL's sigma, evidential u, MC dropout, an ensemble of runs) and every
question (failure at rank 1 / in the top 10, ambiguity where labels exist, calibration) it prints the
metric with its 95% interval over queries, and writes the table, the curves and provenance as JSON plus
the risk-coverage and reliability figures (PNG) beside it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import matplotlib.pyplot as plt

from ralbook.cli.common import Loaded, add_data_arguments, load_for_command
from ralbook.data.collection import Collection, check_dims
from ralbook.errors import ConfigError, DataError
from ralbook.files import write_json
from ralbook.retrieval.index import Index, IndexFolderError
from ralbook.runtime.provenance import file_record
from ralbook.studies import uncertainty_methods as methods
from ralbook.studies.uncertainty import DEFAULT_BOOTSTRAP, labels_for_split
from ralbook.viz.plots import save_figure
from ralbook.viz.uncertainty import reliability_figure, risk_coverage_figure


def add_uncertainty_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="best.pt/last.pt of a ralbook run, or the run folder")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="RUN",
                        help="more runs (checkpoints or run folders) of the same collection: deep-ensemble "
                             "disagreement with --checkpoint's model")
    parser.add_argument("--mc-dropout", type=int, default=0, metavar="T",
                        help="MC dropout with T stochastic passes (T >= 2; default 0: off)")
    parser.add_argument("--split", default="test", help="caption file analysed (default test)")
    parser.add_argument("--val-split", default=None,
                        help="split the softmax temperature is fitted on (default: the run's data.val_split)")
    parser.add_argument("--labels", nargs="+", default=[], metavar="TSV",
                        help="ambiguity labels, lines 'CAPTION_ID<TAB>LABEL' (1 ambiguous, 0 specific); several "
                             "files are merged")
    parser.add_argument("--evidential-k", type=int, default=methods.DEFAULT_EVIDENTIAL_K, metavar="K",
                        help=f"candidates of the evidential Dirichlet (default {methods.DEFAULT_EVIDENTIAL_K})")
    parser.add_argument("--index", help="two-stage retrieval over this index folder: uncertainty of the reranked "
                                        "top K (see `ralbook index`)")
    parser.add_argument("--rerank", type=int, default=100, metavar="K",
                        help="with --index: the K best clip-scale videos re-scored with the fused score (default 100)")
    parser.add_argument("--n-boot", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and MC-dropout seed (default 0)")
    parser.add_argument("--json", help="write the table, curves and provenance here; the figures go beside it")
    add_data_arguments(parser)


# ----------------------------------------------------------------------------- loading


def load_member(args: argparse.Namespace, run: str, collection: Collection) -> Loaded:
    """An ensemble member through the shared loader (same data options), checked against the run's collection."""
    member = load_for_command(args, need_collection=False, checkpoint=run)
    check_dims(member.cfg, collection)
    return member


def ambiguity_labels(paths: list[str], collection: Any, split: str) -> Optional[dict[str, int]]:
    """Caption id -> 0/1 from one or more label files (video labels apply to each caption of the video)."""
    if not paths:
        return None
    merged: dict[str, int] = {}
    for path in paths:
        labels = labels_for_split(path, collection, split)
        if labels.kind == "caption":
            pairs = dict(zip(labels.ids, labels.values.tolist()))
        else:
            of_video = dict(zip(labels.ids, labels.values.tolist()))
            pairs = {c: of_video[collection.video_of(c)] for c, _ in collection.captions(split)
                     if collection.video_of(c) in of_video}
        for cap, value in pairs.items():
            if merged.get(cap, value) != value:
                raise DataError(f"label file {path}: caption {cap} is labelled {value} here but {merged[cap]} in "
                                "an earlier file")
            merged[cap] = int(value)
    return merged


# ----------------------------------------------------------------------------- the command


def provenance(args: argparse.Namespace, loaded: Loaded, members: list[Loaded]) -> dict[str, Any]:
    """What the numbers came from (ralbook.runtime.provenance's one format): the checkpoint and every ensemble
    member with their hashes, split, label files, bootstrap, plus this command's settings."""
    cfg = loaded.cfg
    return loaded.provenance(args, split=args.split, labels=list(args.labels), n_boot=args.n_boot, seed=args.seed,
                             extra={"ensemble": [file_record(m.checkpoint) for m in members],
                                    "collection": cfg.data.collection, "data_root": str(cfg.data.data_root),
                                    "feature": cfg.data.feature, "val_split": args.val_split or cfg.data.val_split,
                                    "index": str(Path(args.index).resolve()) if args.index else None,
                                    "rerank": args.rerank if args.index else None,
                                    "mc_dropout_passes": args.mc_dropout, "evidential_k": args.evidential_k})


def check_arguments(args: argparse.Namespace) -> None:
    if args.n_boot < 2:
        raise ConfigError(f"--n-boot must be >= 2, got {args.n_boot}")
    if args.mc_dropout == 1 or args.mc_dropout < 0:
        raise ConfigError(f"--mc-dropout needs T >= 2 passes (0 = off), got {args.mc_dropout}")
    if args.evidential_k < 1 or args.rerank < 1:
        raise ConfigError(f"--evidential-k and --rerank must be >= 1, got {args.evidential_k} and {args.rerank}")
    if args.index and (args.ensemble or args.mc_dropout):
        raise ConfigError("--index measures the reranked top K of one model: --ensemble and --mc-dropout need "
                          "the exhaustive scores, run them without --index")


def write_outputs(out: Path, result: dict[str, Any], figure_title: str) -> list[Path]:
    """OUT.json plus OUT_risk_coverage.png and OUT_reliability.png (the curves are inside the JSON)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    written = [out]
    fig = risk_coverage_figure(result["curves"]["failure@1"], title=f"{figure_title}: failure at rank 1")
    written += [p for p in save_figure(fig, f"{out.stem}_risk_coverage", out.parent) if p.suffix == ".png"]
    plt.close(fig)
    calibration = result["table"]["calibration"]
    if calibration:
        fig = reliability_figure({n: c["table"] for n, c in calibration.items()},
                                 {n: c["ece"] for n, c in calibration.items()}, title=figure_title)
        written += [p for p in save_figure(fig, f"{out.stem}_reliability", out.parent) if p.suffix == ".png"]
        plt.close(fig)
    return written


def run_uncertainty(args: argparse.Namespace) -> int:
    check_arguments(args)
    loaded = load_for_command(args)
    cfg, model, collection, checkpoint = loaded.cfg, loaded.model, loaded.collection, loaded.checkpoint
    progress = not args.no_progress
    val_split = args.val_split or cfg.data.val_split
    ambiguous = ambiguity_labels(args.labels, collection, args.split)
    if args.index:
        index = Index.open(args.index, model=model, device=loaded.device)
        if index.manifest["split"] != args.split:
            raise IndexFolderError(f"{args.index} indexes split {index.manifest['split']!r}, not {args.split!r}")
        inputs = methods.collect_two_stage(model, collection, index, args.split, args.rerank, cfg,
                                           val_split=val_split, evidential_k=args.evidential_k, progress=progress)
        members: list[Loaded] = []
    else:
        members = [load_member(args, run, collection) for run in args.ensemble]
        ensemble = [methods.split_scores(m.model, collection, args.split, m.cfg, progress=progress) for m in members]
        val_scores = methods.split_scores(model, collection, val_split, cfg, progress=progress)
        inputs = methods.collect(model, collection, args.split, cfg, val_scores=val_scores, ensemble=ensemble,
                                 mc_passes=args.mc_dropout, evidential_k=args.evidential_k, seed=args.seed,
                                 progress=progress)
    table = methods.benchmark(inputs, ambiguous, n_boot=args.n_boot, seed=args.seed)
    title = f"uncertainty: {cfg.data.collection} {args.split}, {checkpoint}"
    if args.index:
        title += f", two-stage (clip-scale top {args.rerank}, then fused)"
    print(methods.format_table(table, title=title))
    print()
    for question, lines in methods.sentences(table).items():
        print(f"{question}:")
        print("\n".join(f"  {line}" for line in lines if " is better " in line or " is worse " in line
                        or "cannot be told apart" in line))
    if args.json:
        curves = {f"failure@{k}": methods.curves(inputs, k) for k in methods.FAILURE_AT
                  if "methods" in table.get(f"failure@{k}", {})}
        result = {"provenance": provenance(args, loaded, members), "table": table, "curves": curves,
                  "sentences": methods.sentences(table), "what_this_shows": methods.what_this_shows(table)}
        for path in write_outputs(Path(args.json), result, f"{cfg.data.collection} {args.split}"):
            print(f"wrote {path}")
    return 0
