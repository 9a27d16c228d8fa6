"""The ``search`` command: rank a collection's videos for a free-text query with a trained model,
and point at the best-matching moment of each.

The query is encoded with the same CLIP text tower ``extract`` used for the captions, so any
words work. The moment is read off the model's own frame branch: the word-by-frame cosine matrix,
weighted by the model's word confidence, gives one value per frame row; the moment is the run of
consecutive rows around the peak that stay at least halfway between the profile's median and its
peak. Frame rows map back to sampled frames (long videos are binned to 128 rows) and, with the
times ``extract`` stored in ``videos.json``, to seconds.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ralbook.analysis import _word_frame_matrix, batched
from ralbook.clipfeatures import words_of
from ralbook.errors import CheckpointError, RalbookError
from ralbook.extract import add_encoder_arguments, read_video_times
from ralbook.features import bin_edges, open_frame_store, query_input, video_inputs


@dataclass
class Moment:
    """Frame rows [first_row, last_row] the model saw, the sampled frames [first_frame, last_frame]
    they cover, and those frames' time span in seconds (None without stored times)."""

    first_row: int
    last_row: int
    first_frame: int
    last_frame: int
    start_s: Optional[float] = None
    end_s: Optional[float] = None

    def format(self, n_frames: int) -> str:
        where = f"frames {self.first_frame}-{self.last_frame} of {n_frames}"
        if self.start_s is None:
            return where
        return f"{self.start_s:.1f}-{self.end_s:.1f} s ({where})"


@dataclass
class Hit:
    """One ranked video: fused score, its moment, and the (words, frame rows) cosines and word
    confidences the moment was read from."""

    video: str
    score: float
    n_frames: int
    moment: Moment
    similarity: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None


class FrameView:
    """The frame side of a collection, enough for ranking: a search needs no caption files."""

    def __init__(self, collection_dir: Path, feature: str, n_clips: int, max_frames: int):
        self.frames = open_frame_store(collection_dir / "FeatureData" / feature)
        self.n_clips, self.max_frames = n_clips, max_frames

    def video_arrays(self, video: str) -> tuple[np.ndarray, np.ndarray]:
        return video_inputs(self.frames.read(video), self.n_clips, self.max_frames)

    def n_frames(self, video: str) -> int:
        return self.frames.n_frames(video)


# ----------------------------------------------------------------------------- moments

def peak_span(profile: np.ndarray) -> tuple[int, int]:
    """[first, last] rows of the run around the profile's maximum that stays >= (median + max) / 2."""
    profile = np.asarray(profile, dtype=np.float64)
    peak = int(np.argmax(profile))
    level = (np.median(profile) + profile[peak]) / 2.0
    first = last = peak
    while first > 0 and profile[first - 1] >= level:
        first -= 1
    while last < len(profile) - 1 and profile[last + 1] >= level:
        last += 1
    return first, last


def rows_to_frames(first_row: int, last_row: int, n_frames: int, max_frames: int) -> tuple[int, int]:
    """Sampled frames [first, last] under frame rows [first_row, last_row] (the binning of features.bin_rows)."""
    if n_frames <= max_frames:
        return first_row, last_row
    edges = bin_edges(n_frames, max_frames)
    return int(edges[first_row]), int(max(edges[last_row + 1] - 1, edges[last_row]))


def frames_to_seconds(first: int, last: int, times: Sequence[float]) -> tuple[float, float]:
    """From the first frame's time to the end of the last one (the next frame's time, or one median
    frame step past the last frame of the video)."""
    times = [float(t) for t in times]
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    end = times[last + 1] if last + 1 < len(times) else times[last] + step
    return times[first], end


def moment_of(similarity: np.ndarray, confidence: np.ndarray, n_frames: int, max_frames: int,
              times: Optional[Sequence[float]] = None) -> Moment:
    """The best-matching moment from a (words, frame rows) cosine matrix and the words' confidence."""
    profile = np.asarray(confidence, dtype=np.float64)[: similarity.shape[0]] @ similarity
    first_row, last_row = peak_span(profile)
    first, last = rows_to_frames(first_row, last_row, n_frames, max_frames)
    moment = Moment(first_row, last_row, first, last)
    if times is not None and len(times) == n_frames:
        moment.start_s, moment.end_s = frames_to_seconds(first, last, times)
    return moment


# ----------------------------------------------------------------------------- ranking

def _encode(model: Any, view: FrameView, videos: Sequence[str], device: torch.device) -> Any:
    from ralbook.data import VideoDataset, collate_videos

    items = VideoDataset(view, videos)  # type: ignore[arg-type]  (needs only video_arrays)
    batch = collate_videos([items[i] for i in range(len(items))])
    return model.encode_videos(*(batch[k].to(device) for k in ("clip_feats", "frame_feats", "frame_mask")))


@torch.no_grad()
def search(model: Any, view: FrameView, videos: Sequence[str], query: np.ndarray, top: int = 10,
           times: Optional[dict[str, list[float]]] = None, batch_size: int = 64, progress: bool = True) -> list[Hit]:
    """The ``top`` videos for one query's token features (L, Dt), best first, each with its moment.

    Videos are encoded and scored ``batch_size`` at a time, so memory does not grow with the
    collection; the top ones are encoded again for their word-by-frame matrices.
    """
    from ralbook.progress import steps

    _check_top(top, len(videos))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        feats = torch.from_numpy(query_input(query, model.cfg.max_desc_len)).unsqueeze(0).to(device)
        mask = torch.ones(feats.shape[:2], device=device)
        q = model.encode_queries(feats, mask)
        confidence = model.word_confidence(feats, mask)[0].float().cpu().numpy()
        scores = []
        for chunk in steps(list(batched(list(videos), batch_size)), "score videos", progress, unit="batches",
                           leave=False):
            scores.append(model.fuse(*model.score_encoded(q, _encode(model, view, chunk, device)))[0].float().cpu())
        fused = torch.cat(scores)
        best = torch.topk(fused, min(top, len(videos))).indices.tolist()
        chosen = [videos[i] for i in best]
        encoded = _encode(model, view, chosen, device)
        hits = _hits(q, confidence, encoded, chosen, fused[best].tolist(), [view.n_frames(v) for v in chosen],
                     model.cfg.max_frames, times)
    finally:
        model.train(was_training)
    return hits


def _hits(queries: Any, confidence: np.ndarray, encoded: Any, chosen: Sequence[str], scores: Sequence[float],
          n_frames: Sequence[int], max_frames: int, times: Optional[dict[str, list[float]]]) -> list[Hit]:
    """Hits for encoded query 0 and its chosen encoded videos, each with its best moment."""
    hits = []
    for j, (vid, score, n) in enumerate(zip(chosen, scores, n_frames)):
        sim = _word_frame_matrix(queries, 0, encoded, j)
        moment = moment_of(sim, confidence, n, max_frames, (times or {}).get(vid))
        hits.append(Hit(vid, float(score), n, moment, sim, confidence[: sim.shape[0]]))
    return hits


@torch.no_grad()
def search_index(index: Any, query: np.ndarray, top: int = 10, rerank: int = 100,
                 view: Optional[FrameView] = None, times: Optional[dict[str, list[float]]] = None) -> list[Hit]:
    """``search`` over a stored index (``ralbook.index.Index``): no video is encoded again.

    Two stages as ``Index.search``: the clip score ranks every stored video, the fused score the
    ``rerank`` best. Moments map to sampled frames through ``view`` (the collection's frames) when
    given; without it, frame rows stand for frames.
    """
    _check_top(top, len(index))
    model, device = index.model, index.device
    feats = torch.from_numpy(query_input(query, model.cfg.max_desc_len)).unsqueeze(0)
    mask = torch.ones(feats.shape[:2])
    found = index.search(feats, mask, k=top, rerank=rerank)
    q = index.encode_queries(feats, mask)
    confidence = model.word_confidence(feats.to(device), mask.to(device))[0].float().cpu().numpy()
    rows, chosen = found.indices[0], found.ids[0]
    n_frames = [view.n_frames(v) if view is not None else int(index.arrays["mask"][i].sum())
                for i, v in zip(rows, chosen)]
    return _hits(q, confidence, index.videos(rows), chosen, found.scores[0].tolist(), n_frames,
                 model.cfg.max_frames, times)


def _check_top(top: int, n_videos: int) -> None:
    if top < 1 or not n_videos:
        raise RalbookError(f"nothing to rank: {n_videos} videos, top {top} (expected at least one video and "
                           f"--top >= 1)")


def format_hits(query: str, hits: Sequence[Hit]) -> str:
    lines = [f"query: {query!r}"]
    width = max((len(h.video) for h in hits), default=0)
    for rank, h in enumerate(hits, 1):
        lines.append(f"{rank:>3}. {h.video:<{width}}  score {h.score:.3f}  best moment {h.moment.format(h.n_frames)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- notebooks

def collection_text_encoder(collection_dir: str | Path, device: str = "cpu") -> tuple[Any, str]:
    """(the CLIP encoder ``extract`` used for this collection, "") from the local cache only, or
    (None, why not): other collections, a missing extra or an uncached model leave it unavailable."""
    from ralbook.clipfeatures import load_clip

    saved = encoder_settings(Path(collection_dir))
    if not saved.get("model"):
        return None, f"{Path(collection_dir).name} was not written by `ralbook extract`, so it has no text encoder"
    try:
        return load_clip(saved["model"], saved.get("revision", "main"), device, offline=True), ""
    except RalbookError as err:
        return None, str(err)


def free_text_explorer(model: Any, view: Any, videos: Sequence[str], encoder: Any,
                       times: Optional[dict[str, list[float]]] = None, top: int = 5) -> tuple[Any, Any]:
    """A text box (ipywidgets): each query prints the top videos and draws the word-by-frame map of
    the best one with its moment outlined. Returns (widget box, render function)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from ralbook.plots import word_frame_heatmap

    def render(text: str) -> list[Hit]:
        if not text.strip():
            return []
        token = encoder.encode_texts([text])[0]
        hits = search(model, view, videos, token.features, top, times, progress=False)
        print(format_hits(text, hits))
        best = hits[0]
        words = words_of(token.tokens)[: best.similarity.shape[0]]
        span = (best.moment.first_row, best.moment.last_row + 1)
        word_frame_heatmap(best.similarity, words, span, best.confidence,
                           title=f"{best.video}: best moment {best.moment.format(best.n_frames)}")
        plt.show()
        return hits

    box_text = widgets.Text(placeholder="any words, e.g. a person opens a door", description="query",
                            continuous_update=False, layout=widgets.Layout(width="90%"))
    out = widgets.interactive_output(render, {"text": box_text})
    box = widgets.VBox([box_text, out])
    display(box)
    return box, render


# ----------------------------------------------------------------------------- command line

def _collection_videos(collection_dir: Path, name: str, split: Optional[str], view: FrameView) -> list[str]:
    """The videos of a split's caption file, or every video with features when no split is named."""
    if not split:
        return view.frames.video_ids()
    from ralbook.data import CaptionFile

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


def encoder_settings(collection_dir: Path) -> dict[str, Any]:
    """The model ``extract`` used for this collection (from extract.json), so queries match captions."""
    path = collection_dir / "extract.json"
    return json.loads(path.read_text(encoding="utf-8")).get("encoder", {}) if path.is_file() else {}


def _text_encoder(args: argparse.Namespace, *sources: dict[str, Any]) -> Any:
    """--model when given, else the first of ``sources`` (extract.json settings) that names one, else the default."""
    from ralbook.clipfeatures import DEFAULT_MODEL, load_clip

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
    from ralbook.evaluate import resolve_device
    from ralbook.index import Index, IndexFolderError

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
    from ralbook.evaluate import model_from_checkpoint, resolve_device

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
