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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ralbook.data.datasets import VideoDataset, batched, collate_videos
from ralbook.data.features import open_frame_store, query_input, video_inputs
from ralbook.errors import RalbookError
from ralbook.runtime.progress import steps
from ralbook.retrieval.moments import Moment, _word_frame_matrix, moment_of
from ralbook.video.clip import load_clip, words_of
from ralbook.video.extract import encoder_settings
from ralbook.viz.plots import word_frame_heatmap


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


# ----------------------------------------------------------------------------- ranking

def _encode(model: Any, view: FrameView, videos: Sequence[str], device: torch.device) -> Any:

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
