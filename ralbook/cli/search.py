"""``ralbook search``: rank a collection's videos for a free-text query."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from ralbook.checkpoint import model_from_checkpoint
from ralbook.cli.extract import add_encoder_arguments
from ralbook.data.collection import CaptionFile
from ralbook.errors import CheckpointError, RalbookError
from ralbook.retrieval.index import Index, IndexFolderError
from ralbook.retrieval.search import FrameView, format_hits, search, search_index
from ralbook.runtime.device import resolve_device
from ralbook.video.clip import DEFAULT_MODEL, load_clip
from ralbook.video.extract import encoder_settings, read_video_times


def _collection_videos(collection_dir: Path, name: str, split: Optional[str], view: FrameView) -> list[str]:
    """The videos of a split's caption file, or every video with features when no split is named."""
    if not split:
        return view.frames.video_ids()

    return list(CaptionFile.read(collection_dir / "TextData" / f"{name}{split}.caption.txt").by_video)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="best.pt of a run trained on CLIP features")
    parser.add_argument("--query", required=True, help="free text, e.g. \"a dog catches a red ball\"")
    parser.add_argument("--index", help="search this index folder (`ralbook index`) instead of encoding the videos")
    parser.add_argument("--rerank", type=int, default=100, help="with --index: videos whose fused score is computed "
                                                                "after the clip-score stage (default %(default)s)")
    parser.add_argument("--data-root", help="folder holding COLLECTION/ (default: the checkpoint's)")
    parser.add_argument("--collection", help="collection name (default: the checkpoint's)")
    parser.add_argument("--feature", help="FeatureData sub-folder (default: the checkpoint's)")
    parser.add_argument("--split", default=None, help="rank only the videos of this caption file (default: all)")
    parser.add_argument("--top", type=int, default=10, help="videos to print (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    add_encoder_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(model=None)


def _text_encoder(args: argparse.Namespace, *sources: dict[str, Any]) -> Any:
    """--model when given, else the first of ``sources`` (extract.json settings) that names one, else the default."""

    saved = next((s for s in sources if s.get("model")), {}) if not args.model else {}
    return load_clip(args.model or saved.get("model", DEFAULT_MODEL),
                     args.revision if args.model else saved.get("revision", args.revision),
                     args.device, args.cache_dir, args.offline)


def _check_text_dim(args: argparse.Namespace, cfg: Any, encoder: Any) -> None:
    if cfg.model.text_dim != encoder.dim:
        raise CheckpointError(f"{args.checkpoint}: the model expects text features of size {cfg.model.text_dim}, "
                              f"but the text encoder gives {encoder.dim} (train with --preset clip on a "
                              "collection written by extract)")


def run_index_search(args: argparse.Namespace, cfg: Any, model: Any, encoder: Any = None) -> int:
    """``search --index DIR``: rank the stored encodings; the collection folder, when present, gives frame
    counts and times for the moments."""

    index = Index.open(args.index, model=model, device=resolve_device(args.device))
    if args.split and args.split != index.manifest["split"]:
        raise IndexFolderError(f"{args.index} indexes split {index.manifest['split']!r}, not {args.split!r}")
    data = index.manifest["config"]["data"]
    collection_dir = Path(args.data_root or data["data_root"]) / (args.collection or index.manifest["collection"])
    found = collection_dir.is_dir()
    if encoder is None:
        encoder = _text_encoder(args, index.manifest.get("encoder", {}),
                                encoder_settings(collection_dir) if found else {})
    _check_text_dim(args, cfg, encoder)
    view = (FrameView(collection_dir, args.feature or data["feature"], cfg.data.n_clips, cfg.data.max_frames)
            if found else None)
    query = encoder.encode_texts([args.query])[0].features
    hits = search_index(index, query, args.top, args.rerank, view, read_video_times(collection_dir) if found else None)
    print(format_hits(args.query, hits))
    return 0


def run_search(args: argparse.Namespace, encoder: Any = None) -> int:

    cfg, model, _ = model_from_checkpoint(args.checkpoint)
    if args.index:
        return run_index_search(args, cfg, model, encoder)
    root = Path(args.data_root or cfg.data.data_root)
    name = args.collection or cfg.data.collection
    collection_dir = root / name
    if not collection_dir.is_dir():
        raise RalbookError(f"{collection_dir}: missing collection folder (pass --data-root and --collection)")
    view = FrameView(collection_dir, args.feature or cfg.data.feature, cfg.data.n_clips, cfg.data.max_frames)
    if encoder is None:
        encoder = _text_encoder(args, encoder_settings(collection_dir))
    if cfg.model.visual_dim != view.frames.dim:
        raise CheckpointError(f"{args.checkpoint}: the model expects visual features of size {cfg.model.visual_dim}, "
                              f"but collection {name} gives {view.frames.dim} (train with --preset clip on a "
                              "collection written by extract)")
    _check_text_dim(args, cfg, encoder)
    model.to(resolve_device(args.device))
    query = encoder.encode_texts([args.query])[0].features
    videos = _collection_videos(collection_dir, name, args.split, view)
    hits = search(model, view, videos, query, args.top, read_video_times(collection_dir),
                  progress=not args.no_progress)
    print(format_hits(args.query, hits))
    return 0
