"""``ralbook inspect``: validate a collection and print its summary."""
from __future__ import annotations

import argparse
import warnings

from ralbook.cli.common import flatten_list
from ralbook.data.collection import Collection, DEFAULT_FEATURES, SPLITS


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check a collection and print its summary. Errors (exit code 2, one line) stop a run: a missing or "
        "malformed file, a captioned video without frames, a repeated caption id, a caption without token "
        "features. Warnings (lines starting 'warning:', exit code 0) do not: caption lines that hold an id "
        "and no text (reported with file, line and id; training does not read the text, notebooks, extract "
        "and search do), and feature rows whose norm is far above the collection's.")
    parser.add_argument("--data-root", default="data", help="folder that holds COLLECTION/ (default: data)")
    parser.add_argument("--collection", default="demo", help="collection folder name (default: demo)")
    parser.add_argument("--feature", default=None,
                        help=f"FeatureData sub-folder (default per collection: {DEFAULT_FEATURES})")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS),
                        help="caption files to check, space- or comma-separated (default: train val test)")
    parser.add_argument("--text-feature-file", default=None, help="text-feature HDF5 (default: the release name)")
    parser.add_argument("--video-feature-file", default=None, help="per-video HDF5 instead of feature.bin")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_inspect(args: argparse.Namespace) -> int:
    """Validate the collection, then print its summary; broken data raises DataError (exit 2 in the CLI)."""
    collection = Collection(args.data_root, args.collection, args.feature, args.text_feature_file,
                            video_feature_file=args.video_feature_file)
    args.splits = flatten_list(args.splits)
    found = collection.validate(args.splits, progress=not args.no_progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notes are printed with the table
        summary = collection.summary(args.splits, progress=not args.no_progress)
    print(summary.format())
    for message in found:
        print(f"warning: {message}")
    if found:
        print(f"ok: {collection.dir} passed all checks for splits {', '.join(args.splits)}, with {len(found)} "
              f"warning{'s' if len(found) > 1 else ''} (above)")
    else:
        print(f"ok: {collection.dir} passed all checks for splits {', '.join(args.splits)}")
    return 0
