"""``ralbook search``: rank a collection's videos for a free-text query, or for a stored caption (--query-id)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ralbook.cli.common import (DEFAULT_RERANK, RERANK_HELP, Loaded, add_data_arguments, load_for_command,
                                resolve_data_root)
from ralbook.cli.extract import add_encoder_arguments
from ralbook.data.collection import CaptionFile, Collection
from ralbook.errors import CheckpointError, ConfigError
from ralbook.retrieval.index import Index, IndexFolderError
from ralbook.retrieval.search import FrameView, format_hits, search, search_index
from ralbook.video.clip import DEFAULT_MODEL, load_clip
from ralbook.video.extract import encoder_settings, read_video_times

CLIP_TEXT_SIZES = {DEFAULT_MODEL: 512}  # text feature size of the encoders known without loading them


def _collection_videos(collection_dir: Path, name: str, split: Optional[str], view: FrameView) -> list[str]:
    """The videos of a split's caption file, or every video with features when no split is named."""
    if not split:
        return view.frames.video_ids()
    return list(CaptionFile.read(collection_dir / "TextData" / f"{name}{split}.caption.txt").by_video)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory or its best.pt (free text needs a model trained on CLIP features)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", help="free text, e.g. \"a dog catches a red ball\" (CLIP collections only)")
    what.add_argument("--query-id", metavar="CAPTION_ID",
                      help="search with a stored caption's features (any collection, e.g. the demo)")
    parser.add_argument("--index", help="search this index folder (`ralbook index`) instead of encoding the videos")
    parser.add_argument("--rerank", type=int, default=DEFAULT_RERANK, metavar="K", help=RERANK_HELP)
    parser.add_argument("--split", default=None, help="rank only the videos of this caption file (default: all)")
    parser.add_argument("--top", type=int, default=10, help="videos to print (default %(default)s)")
    add_data_arguments(parser)
    add_encoder_arguments(parser)
    parser.set_defaults(model=None)


def check_text_source(args: argparse.Namespace, cfg: Any, *sources: dict[str, Any]) -> dict[str, Any]:
    """Before any download: the settings of the text encoder free text will go through, or ConfigError when
    the model cannot take free text (no extract.json recorded an encoder, or the sizes differ)."""
    saved = next((s for s in sources if s.get("model")), {})
    if not args.model and not saved:
        raise ConfigError(f"{args.checkpoint}: free-text search needs a model trained on CLIP features of a "
                          f"collection written by `ralbook extract` (collection {cfg.data.collection!r} has no "
                          f"extract.json, and the model takes text features of size {cfg.model.text_dim}); "
                          "search by a stored caption instead with --query-id CAPTION_ID")
    name = args.model or saved.get("model", DEFAULT_MODEL)
    size = CLIP_TEXT_SIZES.get(name)
    if size is not None and size != cfg.model.text_dim:
        raise CheckpointError(f"{args.checkpoint}: the model expects text features of size {cfg.model.text_dim}, "
                              f"but {name} gives {size}: train with --preset clip on a collection written by "
                              "`ralbook extract`, or use --query-id CAPTION_ID")
    return saved


def _text_encoder(args: argparse.Namespace, saved: dict[str, Any]) -> Any:
    """--model when given, else the model extract.json names."""
    return load_clip(args.model or saved.get("model", DEFAULT_MODEL),
                     args.revision if args.model else saved.get("revision", args.revision),
                     args.device, args.cache_dir, args.offline)


def _check_text_dim(args: argparse.Namespace, cfg: Any, encoder: Any) -> None:
    if cfg.model.text_dim != encoder.dim:
        raise CheckpointError(f"{args.checkpoint}: the model expects text features of size {cfg.model.text_dim}, "
                              f"but the text encoder gives {encoder.dim} (train with --preset clip on a "
                              "collection written by extract)")


def query_features(args: argparse.Namespace, cfg: Any, collection_dir: Path, encoder: Any,
                   *sources: dict[str, Any]) -> tuple[str, np.ndarray]:
    """(label, token features (L, Dt)) of --query-id (read from the collection) or --query (encoded)."""
    if args.query_id:
        if not collection_dir.is_dir():
            raise ConfigError(f"--query-id needs the collection folder {collection_dir}: pass --data-root")
        store = Collection(collection_dir.parent, collection_dir.name, cfg.data.feature or None,
                           cfg.data.text_feature_file or None)
        return f"caption {args.query_id}", store.text_features(args.query_id)
    saved = check_text_source(args, cfg, *sources)
    if encoder is None:
        encoder = _text_encoder(args, saved)
    _check_text_dim(args, cfg, encoder)
    return args.query, encoder.encode_texts([args.query])[0].features


def run_index_search(args: argparse.Namespace, loaded: Loaded, encoder: Any = None) -> int:
    """``search --index DIR``: rank the stored encodings; the collection folder, when present, gives frame
    counts and times for the moments."""
    cfg = loaded.cfg
    index = Index.open(args.index, model=loaded.model, device=loaded.device)
    if args.split and args.split != index.manifest["split"]:
        raise IndexFolderError(f"{args.index} indexes split {index.manifest['split']!r}, not {args.split!r}")
    data = index.manifest["config"]["data"]
    root = Path(cfg.data.data_root) if args.data_root else Path(data["data_root"])
    collection_dir = root / (args.collection or index.manifest["collection"])
    found = collection_dir.is_dir()
    label, query = query_features(args, cfg, collection_dir, encoder, index.manifest.get("encoder", {}),
                                  encoder_settings(collection_dir) if found else {})
    view = (FrameView(collection_dir, args.feature or data["feature"], cfg.data.n_clips, cfg.data.max_frames)
            if found else None)
    hits = search_index(index, query, args.top, args.rerank, view, read_video_times(collection_dir) if found else None)
    print(format_hits(label, hits))
    return 0


def run_search(args: argparse.Namespace, encoder: Any = None) -> int:
    loaded = load_for_command(args, need_collection=False)
    args.device = str(loaded.device)  # the text encoder runs beside the model
    if args.index:
        return run_index_search(args, loaded, encoder)
    cfg = resolve_data_root(loaded.cfg, str(loaded.checkpoint))
    collection_dir = Path(cfg.data.data_root) / cfg.data.collection
    view = FrameView(collection_dir, cfg.data.feature, cfg.data.n_clips, cfg.data.max_frames)
    if cfg.model.visual_dim != view.frames.dim:
        raise CheckpointError(f"{args.checkpoint}: the model expects visual features of size {cfg.model.visual_dim}, "
                              f"but collection {cfg.data.collection} gives {view.frames.dim} (train with --preset "
                              "clip on a collection written by extract)")
    label, query = query_features(args, cfg, collection_dir, encoder, encoder_settings(collection_dir))
    videos = _collection_videos(collection_dir, cfg.data.collection, args.split, view)
    hits = search(loaded.model, view, videos, query, args.top, read_video_times(collection_dir),
                  progress=not args.no_progress)
    print(format_hits(label, hits))
    return 0
