"""Evaluation: encode every video once, score queries in chunks, rank, and report R@K (docs/method.md#task-and-metric).

Peak memory is bounded by the chunk sizes: at most ``query_chunk x video_chunk`` query-video pairs
are scored at once, and only (query_chunk, Nv) score rows are kept per chunk; the full
(Nq, Nv, Lq, Lf) similarity tensor never exists. Results do not depend on the chunk sizes.

Ties are broken as the authors' evaluation breaks them: they sort the negated scores with
``argsort`` and take the position of the ground-truth video, so among equal scores the video
listed first in the split ranks first. Here that is computed without sorting:
rank = 1 + #(higher scores) + #(equal scores at a smaller video index).
With several relevant videos per query, the rank is that of the best-ranked relevant one.

Also here (the lowest layer the engine shares): device selection; precision is ralbook.precision.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ralbook.checkpoint import check_finite_state
from ralbook.config import Config
from ralbook.data.datasets import QueryDataset, VideoDataset, collate_queries, collate_videos
from ralbook.errors import NonFiniteError, RalbookError, shorten
from ralbook.retrieval.metrics import (METRIC_NAMES, ranks_from_scores, read_relevant_file, recall_metrics,
                                       relevant_indices, top_indices)
from ralbook.runtime.device import to_device
from ralbook.runtime.precision import autocast
from ralbook.runtime.workers import workers_for


SCORE_KINDS: tuple[str, ...] = ("clip", "frame", "fused")
MAX_KEPT_SCORES = 50_000_000  # keep_scores refuses larger (Nq x Nv) matrices (3 kinds x 4 bytes each)

# ----------------------------------------------------------------------------- device and precision


# ----------------------------------------------------------------------------- ranks and recalls


# ----------------------------------------------------------------------------- results


@dataclass
class EvalResult:
    """Everything an evaluation produced; indices refer to ``video_ids`` and ``cap_ids``."""

    metrics: dict[str, dict[str, float]]  # kind -> {R@1, R@5, R@10, R@100, SumR}
    ranks: dict[str, np.ndarray]          # kind -> (Nq,) 1-based rank
    topk: dict[str, np.ndarray]           # kind -> (Nq, k) video indices, best first
    cap_ids: list[str]
    video_ids: list[str]
    split: str = ""
    scores: Optional[dict[str, np.ndarray]] = None  # kind -> (Nq, Nv), only with keep_scores

    def topk_ids(self, kind: str = "fused") -> list[list[str]]:
        return [[self.video_ids[j] for j in row] for row in self.topk[kind]]

    def to_json(self, per_query: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"split": self.split, "n_queries": len(self.cap_ids), "n_videos": len(self.video_ids),
                               "metrics": self.metrics}
        if per_query:
            top = self.topk_ids("fused")
            out["queries"] = [{"cap_id": cap, **{f"rank_{k}": int(self.ranks[k][i]) for k in self.ranks},
                               "top_fused": top[i]} for i, cap in enumerate(self.cap_ids)]
        return out


def format_metrics(metrics: Union[EvalResult, dict[str, dict[str, float]]], title: str = "") -> str:
    """A fixed-width table: one row per score kind, columns R@1 .. SumR."""
    table = metrics.metrics if isinstance(metrics, EvalResult) else metrics
    lines = [title] if title else []
    width = max([6] + [len(kind) + 1 for kind in table])  # room for labels such as frame@200
    lines.append(f"{'score':<{width}}" + "".join(f"{name:>8}" for name in METRIC_NAMES))
    for kind, values in table.items():
        lines.append(f"{kind:<{width}}" + "".join(f"{values[name]:>8.1f}" for name in METRIC_NAMES))
    return "\n".join(lines)


class RankAccumulator:
    """Collects per-chunk score rows into ranks, top-k indices and (optionally) full score matrices.

    Chunks may arrive in any query order: ``positions`` says where each row belongs.
    """

    def __init__(self, n_videos: int, topk: int = 10, keep_scores: bool = False, source: str = "the model"):
        self.n_videos, self.k, self.keep_scores, self.source = n_videos, topk, keep_scores, source
        self.bad_queries = 0                                          # queries with a non-finite score
        self.bad_videos = torch.zeros(n_videos, dtype=torch.bool)     # videos with a non-finite score
        self.ranks: dict[str, list[Tensor]] = {kind: [] for kind in SCORE_KINDS}
        self.top: dict[str, list[Tensor]] = {kind: [] for kind in SCORE_KINDS}
        self.rows: dict[str, list[Tensor]] = {kind: [] for kind in SCORE_KINDS}
        self.positions: list[Tensor] = []

    def add(self, scores: dict[str, Tensor], relevant: Tensor, positions: Optional[Tensor] = None) -> None:
        n = scores["fused"].shape[0]
        start = sum(len(p) for p in self.positions)
        self.positions.append(positions.cpu() if positions is not None else torch.arange(start, start + n))
        bad = torch.zeros_like(self.bad_videos)
        bad_rows = torch.zeros(n, dtype=torch.bool)
        for kind in SCORE_KINDS:
            s = scores[kind].float()
            broken = ~torch.isfinite(s)
            bad |= broken.any(dim=0).cpu()
            bad_rows |= broken.any(dim=1).cpu()
            self.ranks[kind].append(ranks_from_scores(s, relevant).cpu())
            self.top[kind].append(top_indices(s, self.k).cpu())
            if self.keep_scores:
                self.rows[kind].append(s.cpu())
        self.bad_videos |= bad
        self.bad_queries += int(bad_rows.sum())

    def result(self, cap_ids: list[str], video_ids: list[str], split: str = "") -> EvalResult:
        """The ranks and metrics; NonFiniteError when any score was NaN or infinite."""
        if self.bad_queries:
            n = sum(len(p) for p in self.positions)
            raise NonFiniteError(f"{self.source}: {self.bad_queries} of {n} queries and {int(self.bad_videos.sum())} "
                                 f"of {self.n_videos} videos{f' of split {split!r}' if split else ''} have non-finite "
                                 "(NaN or inf) scores; no metric is computed from them (broken weights or features?)")
        order = torch.argsort(torch.cat(self.positions))  # back to the callers' query order
        ranks = {k: torch.cat(v)[order].numpy() for k, v in self.ranks.items()}
        top = {k: torch.cat(v)[order].numpy() for k, v in self.top.items()}
        kept = {k: torch.cat(v)[order].numpy() for k, v in self.rows.items()} if self.keep_scores else None
        metrics = {k: recall_metrics(r) for k, r in ranks.items()}
        return EvalResult(metrics, ranks, top, list(cap_ids), list(video_ids), split, kept)


# ----------------------------------------------------------------------------- chunked scoring


def concat_encodings(parts: Sequence[Any]) -> Any:
    """Concatenate encodings (dataclasses of tensors sharing the leading dimension)."""
    first = parts[0]
    return type(first)(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)))


def length_order(mask: Tensor) -> Tensor:
    """Indices that sort rows by their number of valid positions (stable)."""
    return torch.argsort(mask.sum(dim=1).cpu(), stable=True)


class SortedVideos:
    """Encoded videos sorted by length, so that each scoring chunk cuts its common trailing padding
    (see ``ralbook.model.masked_max_sim``); scores come back in the original video order."""

    def __init__(self, videos: Any):
        order = length_order(videos.mask)
        self.videos = videos.select(order.to(videos.mask.device))
        self.inverse = torch.argsort(order).to(videos.mask.device)

    def __len__(self) -> int:
        return len(self.videos)


def score_rows(model: Any, queries: Any, videos: Union[Any, SortedVideos], video_chunk: int) -> dict[str, Tensor]:
    """clip, frame and fused scores (n, Nv) of some encoded queries against all encoded videos."""
    sorted_ = isinstance(videos, SortedVideos)
    encoded = videos.videos if sorted_ else videos
    clips, frames = [], []
    for start in range(0, len(encoded), video_chunk):
        c, f = model.score_encoded(queries, encoded.select(slice(start, start + video_chunk)))
        clips.append(c.float())
        frames.append(f.float())
    clip, frame = torch.cat(clips, dim=1), torch.cat(frames, dim=1)
    if sorted_:
        clip, frame = clip[:, videos.inverse], frame[:, videos.inverse]
    return {"clip": clip, "frame": frame, "fused": model.fuse(clip, frame)}


def rank_encoded(model: Any, queries: Any, videos: Any, relevant: Tensor, query_chunk: int = 500,
                 video_chunk: int = 500, topk: int = 10, keep_scores: bool = False,
                 cap_ids: Optional[list[str]] = None, video_ids: Optional[list[str]] = None,
                 source: str = "the model") -> EvalResult:
    """Rank already-encoded queries against encoded videos, ``query_chunk x video_chunk`` pairs at a time.

    Queries and videos are processed sorted by length (less padding per chunk); results are in
    the given order.
    """
    acc = RankAccumulator(len(videos), topk, keep_scores, source)
    by_length = SortedVideos(videos)
    order = length_order(queries.mask)
    with torch.no_grad():
        for start in range(0, len(queries), query_chunk):
            part = order[start:start + query_chunk]
            rows = score_rows(model, queries.select(part.to(queries.mask.device)), by_length, video_chunk)
            acc.add(rows, relevant[part], part)
    cap_ids = cap_ids if cap_ids is not None else [str(i) for i in range(len(queries))]
    video_ids = video_ids if video_ids is not None else [str(i) for i in range(len(videos))]
    return acc.result(cap_ids, video_ids)


# ----------------------------------------------------------------------------- relevance


# ----------------------------------------------------------------------------- evaluating a collection split


def _seeded_generator(seed: int = 0) -> torch.Generator:
    """DataLoaders get their own generator so that evaluation never consumes the global RNG."""
    return torch.Generator().manual_seed(seed)


def encode_video_set(model: Any, collection: Any, video_ids: list[str], device: torch.device, batch_size: int,
                     num_workers: int = 0, amp: str = "none", progress: bool = True) -> Any:
    """Encode all videos in batches; returns one VideoEncoding (Nv, ...) on ``device``."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm


    loader = DataLoader(VideoDataset(collection, video_ids), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_videos, generator=_seeded_generator())
    parts = []
    for batch in tqdm(loader, desc="encode videos", leave=False, disable=not progress):
        batch = to_device(batch, device)
        with autocast(device, amp):
            enc = model.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        parts.append(type(enc)(*(getattr(enc, f.name).float() for f in dataclasses.fields(enc))))
    return concat_encodings(parts)


def check_finite_encodings(videos: Any, video_ids: Sequence[str], source: str, split: str = "") -> None:
    """NonFiniteError naming ``source`` and how many videos encode to NaN or inf (weights are finite,
    so their features must be extreme or broken)."""
    bad = torch.zeros(len(videos), dtype=torch.bool, device=videos.mask.device)
    for f in dataclasses.fields(videos):
        value = getattr(videos, f.name)
        bad |= ~torch.isfinite(value.reshape(len(value), -1)).all(dim=1)
    if bool(bad.any()):

        first = [video_ids[i] for i in torch.nonzero(bad).squeeze(1)[:3].tolist()]
        raise NonFiniteError(f"{source}: {int(bad.sum())} of {len(videos)} videos{f' of split {split!r}' if split else ''}"
                             f" encode to non-finite (NaN or inf) values, e.g. {shorten(first)}; check their "
                             "features (ralbook inspect)")


def evaluate(model: Any, collection: Any, split: str = "test", cfg: Optional[Config] = None,
             device: Optional[Union[str, torch.device]] = None, *, video_ids: Optional[list[str]] = None,
             cap_ids: Optional[list[str]] = None, query_chunk: Optional[int] = None,
             video_chunk: Optional[int] = None, video_batch: int = 64,
             relevant: Optional[Union[str, Path, dict[str, list[str]]]] = None, topk: int = 10,
             keep_scores: bool = False, amp: Optional[str] = None, progress: bool = True,
             source: str = "the model", videos: Optional[Any] = None) -> EvalResult:
    """Rank every caption of ``split`` against every video of it; R@K for clip, frame and fused scores.

    ``video_ids``/``cap_ids`` override the split's own lists (used for a validation set carved
    out of the training videos). ``relevant``: a file or dict caption id -> relevant video ids.
    ``source`` names the model in errors (e.g. ``checkpoint runs/demo/best.pt``): NonFiniteError
    when a weight, a video encoding or a score is NaN or infinite.
    ``videos``: the VideoEncoding of ``video_ids``, when it is already computed (shared evaluation).
    """

    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm


    train_cfg = cfg.train if cfg is not None else None
    query_chunk = query_chunk or (train_cfg.eval_query_chunk if train_cfg else 500)
    video_chunk = video_chunk or (train_cfg.eval_video_chunk if train_cfg else 500)
    amp = amp if amp is not None else (train_cfg.amp if train_cfg else "none")
    num_workers = workers_for(cfg.data.num_workers) if cfg is not None else 0
    video_ids = list(video_ids) if video_ids is not None else collection.videos(split)
    cap_ids = list(cap_ids) if cap_ids is not None else [c for c, _ in collection.captions(split)]
    # queries of similar length share a chunk (less padding); results return to cap_ids order
    n_tokens = getattr(collection, "n_tokens", None)
    order = sorted(range(len(cap_ids)), key=lambda i: n_tokens(cap_ids[i])) if n_tokens else list(range(len(cap_ids)))
    if keep_scores and len(cap_ids) * len(video_ids) > MAX_KEPT_SCORES:
        raise RalbookError(f"keep_scores: {len(cap_ids)} x {len(video_ids)} score matrix is too large to keep "
                           f"(limit {MAX_KEPT_SCORES} entries); evaluate a subset instead")
    extra = read_relevant_file(relevant) if isinstance(relevant, (str, Path)) else relevant
    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_finite_state(model.state_dict(), source)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if videos is None:
                videos = encode_video_set(model, collection, video_ids, device, video_batch, num_workers, amp,
                                          progress)
            check_finite_encodings(videos, video_ids, source, split)
            videos = SortedVideos(videos)
            loader = DataLoader(QueryDataset(collection, [cap_ids[i] for i in order]), batch_size=query_chunk,
                                shuffle=False, num_workers=num_workers, collate_fn=collate_queries,
                                generator=_seeded_generator())
            acc = RankAccumulator(len(video_ids), topk, keep_scores, source)
            done = 0
            for batch in tqdm(loader, desc=f"score {split} queries", leave=False, disable=not progress):
                rel = relevant_indices(batch["cap_ids"], batch["video_ids"], video_ids, extra,
                                       source=str(relevant) if isinstance(relevant, (str, Path)) else "relevant")
                positions = torch.tensor(order[done:done + len(rel)], dtype=torch.long)
                done += len(rel)
                batch = to_device(batch, device)
                with autocast(device, amp):
                    queries = model.encode_queries(batch["query_feats"], batch["query_mask"])
                    rows = score_rows(model, queries, videos, video_chunk)
                acc.add(rows, rel, positions)
    finally:
        model.train(was_training)
    return acc.result(cap_ids, video_ids, split)


# ----------------------------------------------------------------------------- loading models


# ----------------------------------------------------------------------------- command line
