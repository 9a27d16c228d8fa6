"""``ralbook index``: encode a split's videos once into an index folder."""
from __future__ import annotations

import argparse
import time

from ralbook.checkpoint import model_from_checkpoint
from ralbook.cli.common import add_data_arguments, apply_data_arguments
from ralbook.config import require_data_root
from ralbook.data.collection import Collection, check_dims
from ralbook.retrieval.index import DTYPES, build_index
from ralbook.runtime.device import resolve_device
from ralbook.runtime.provenance import result_provenance


def add_index_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--checkpoint", required=True, help="best.pt of a run, or the authors' checkpoint")
    parser.add_argument("--preset", choices=["demo", "tvr", "act", "cha"], help="configuration of an authors' file")
    parser.add_argument("--split", default="test", help="caption file whose videos are indexed (default test)")
    parser.add_argument("--out", required=True, help="index folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="storage type of the encodings (float16 halves the disk size)")
    parser.add_argument("--batch-size", type=int, default=64, help="videos encoded at once (bounds memory)")
    add_data_arguments(parser)


def run_index(args: argparse.Namespace) -> int:

    cfg, model, _ = model_from_checkpoint(args.checkpoint, args.preset, adjust=lambda c: apply_data_arguments(c, args))
    require_data_root(cfg)
    collection = Collection.from_config(cfg.data)
    check_dims(cfg, collection)
    device = resolve_device(cfg.train.device)
    started = time.perf_counter()
    record = result_provenance(checkpoint=args.checkpoint, split=args.split, precision=cfg.train.amp,
                               device=str(device), argv=getattr(args, "argv", None))
    out = build_index(model.to(device), collection, args.split, cfg, args.out, device, args.batch_size, args.dtype,
                      progress=not args.no_progress, provenance=record)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"index {out}: {len(collection.videos(args.split))} videos of {cfg.data.collection} {args.split}, "
          f"{size:.1f} MiB, {time.perf_counter() - started:.1f} s")
    return 0
