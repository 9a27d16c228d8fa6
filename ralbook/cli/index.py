"""``ralbook index``: encode a split's videos once into an index folder."""
from __future__ import annotations

import argparse
import time

from ralbook.cli.common import add_data_arguments, load_for_command, preset_argument
from ralbook.retrieval.index import DTYPES, build_index
from ralbook.runtime.provenance import result_provenance


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run directory, its best.pt, or the authors' file")
    preset_argument(parser)
    parser.add_argument("--split", default="test", help="caption file whose videos are indexed (default test)")
    parser.add_argument("--out", required=True, help="index folder to write (not a run directory)")
    parser.add_argument("--force", action="store_true",
                        help="write even over an index of other weights, a run directory or a non-empty folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="storage type of the encodings (float16 halves the disk size)")
    parser.add_argument("--batch-size", type=int, default=64, help="videos encoded at once (bounds memory)")
    add_data_arguments(parser)


def run_index(args: argparse.Namespace) -> int:
    loaded = load_for_command(args)
    cfg, collection = loaded.cfg, loaded.collection
    started = time.perf_counter()
    record = result_provenance(checkpoint=loaded.checkpoint, split=args.split, precision=cfg.train.amp,
                               device=str(loaded.device), argv=getattr(args, "argv", None))
    out = build_index(loaded.model, collection, args.split, cfg, args.out, loaded.device, args.batch_size,
                      args.dtype, progress=not args.no_progress, force=args.force, provenance=record)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"index {out}: {len(collection.videos(args.split))} videos of {cfg.data.collection} {args.split}, "
          f"{size:.1f} MiB, {time.perf_counter() - started:.1f} s")
    return 0
