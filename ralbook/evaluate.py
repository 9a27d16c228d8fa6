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

import argparse
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ralbook.config import PRESETS, Config, preset
from ralbook.errors import CheckpointError, DataError, NonFiniteError, RalbookError
from ralbook.precision import autocast, describe_amp
from ralbook.workers import workers_for

SCORE_KINDS: tuple[str, ...] = ("clip", "frame", "fused")
RECALL_AT: tuple[int, ...] = (1, 5, 10, 100)
METRIC_NAMES: tuple[str, ...] = tuple(f"R@{k}" for k in RECALL_AT) + ("SumR",)
MAX_KEPT_SCORES = 50_000_000  # keep_scores refuses larger (Nq x Nv) matrices (3 kinds x 4 bytes each)

# ----------------------------------------------------------------------------- device and precision


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; any other name is checked to be usable."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise RalbookError(f"unknown device {name!r} ({err}); use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RalbookError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RalbookError(f"device {name!r} requested but Apple MPS is not available on this machine")
    return device


# ----------------------------------------------------------------------------- ranks and recalls


def worst_if_non_finite(scores: Tensor) -> Tensor:
    """Scores with NaN and +-inf replaced by -inf, the worst possible score.

    Why: a NaN compares false with everything, so nothing would outrank it and a NaN score
    would rank first. Evaluation refuses non-finite scores (``check_finite``); this keeps the
    ranking functions honest when called directly.
    """
    return torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))


def ranks_from_scores(scores: Tensor, relevant: Tensor) -> Tensor:
    """1-based rank of the best-ranked relevant video of each query; ties by video index.

    scores (n, Nv); relevant (n, R) video indices, -1 = padding. A query with no relevant video
    gets rank Nv + 1 (it never counts as retrieved), as in the authors' code. A non-finite score
    is the worst possible: such a video ranks below every finite one, and a relevant video
    with a non-finite score gets rank Nv + 1 (never retrieved).
    """
    n, nv = scores.shape
    finite = torch.isfinite(scores)
    scores = worst_if_non_finite(scores)
    best = torch.full((n,), nv + 1, dtype=torch.long, device=scores.device)
    columns = torch.arange(nv, device=scores.device).unsqueeze(0)
    for r in range(relevant.shape[1]):
        target = relevant[:, r].to(scores.device)
        index = target.clamp(min=0).unsqueeze(1)
        valid = (target >= 0) & finite.gather(1, index).squeeze(1)
        own = scores.gather(1, index)
        higher = (scores > own).sum(dim=1)
        tied_before = ((scores == own) & (columns < index)).sum(dim=1)
        best = torch.where(valid, torch.minimum(best, 1 + higher + tied_before), best)
    return best


def top_indices(scores: Tensor, k: int) -> Tensor:
    """(n, k) video indices in ranking order (stable: ties keep the video order, like the ranks;
    non-finite scores last)."""
    k = min(k, scores.shape[1])
    return torch.sort(worst_if_non_finite(scores), dim=1, descending=True, stable=True).indices[:, :k]


def recall_metrics(ranks: Union[Tensor, np.ndarray]) -> dict[str, float]:
    """R@1/5/10/100 in percent of queries, and their sum."""
    ranks = np.asarray(ranks.cpu() if isinstance(ranks, Tensor) else ranks)
    if ranks.size == 0:
        raise DataError("no queries to evaluate")
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_AT}
    out["SumR"] = float(sum(out[f"R@{k}"] for k in RECALL_AT))
    return out


def chance_metrics(n_relevant: Sequence[int], n_videos: int) -> dict[str, float]:
    """Expected R@k and SumR of a uniformly random ranking, the floor a trained model must beat.

    A query with m relevant videos among N is found in the top k with probability
    1 - C(N-m, k) / C(N, k): with many relevant videos (ambiguous captions) chance is high.
    """
    counts = np.asarray(list(n_relevant), dtype=np.int64)
    if counts.size == 0 or n_videos < 1 or counts.min() < 0 or counts.max() > n_videos:
        raise DataError(f"chance_metrics: need 0 <= relevant <= {n_videos} videos for at least one query")
    out = {}
    for k in RECALL_AT:
        k_eff = min(k, n_videos)
        miss = np.ones(counts.size)
        for i in range(k_eff):  # P(no relevant video among the first k) = prod (N-m-i)/(N-i)
            miss *= np.clip(n_videos - counts - i, 0, None) / (n_videos - i)
        out[f"R@{k}"] = float(100.0 * np.mean(1.0 - miss))
    out["SumR"] = float(sum(out[f"R@{k}"] for k in RECALL_AT))
    return out


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
    lines.append(f"{'score':<6}" + "".join(f"{name:>8}" for name in METRIC_NAMES))
    for kind, values in table.items():
        lines.append(f"{kind:<6}" + "".join(f"{values[name]:>8.1f}" for name in METRIC_NAMES))
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


def read_relevant_file(path: Union[str, Path]) -> dict[str, list[str]]:
    """Caption id -> relevant video ids, from JSON ({cap: [vid, ...]}) or text lines ``CAPID VID [VID ...]``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"relevance file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"relevance file {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"relevance file {path}: expected a JSON object caption id -> list of video ids")
        return {str(k): [str(v) for v in vs] for k, vs in data.items()}
    out: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields_ = line.split()
        if not fields_:
            continue
        if len(fields_) < 2:
            raise DataError(f"relevance file {path} line {number}: expected 'CAPID VIDEOID [VIDEOID ...]', "
                            f"got {line.strip()!r}")
        out[fields_[0]] = fields_[1:]
    return out


def relevant_indices(cap_ids: Sequence[str], gt_videos: Sequence[str], video_ids: Sequence[str],
                     extra: Optional[dict[str, list[str]]] = None, source: str = "relevance file") -> Tensor:
    """(n, R) video indices relevant to each caption (-1 padded).

    By default a caption's only relevant video is its own; ``extra`` replaces that list for the
    captions it names. A listed video must belong to the evaluated split.
    """
    index = {v: i for i, v in enumerate(video_ids)}
    rows: list[list[int]] = []
    for cap, own in zip(cap_ids, gt_videos):
        names = extra.get(cap, [own]) if extra else [own]
        row = []
        for name in names:
            if name not in index:
                if extra and cap in extra:
                    raise DataError(f"{source}: caption {cap} lists video {name!r}, which is not among the "
                                    f"{len(video_ids)} videos of the evaluated split")
                continue  # own video absent: rank Nv + 1, as the authors' code
            row.append(index[name])
        rows.append(row)
    width = max([len(r) for r in rows] + [1])
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------- evaluating a collection split


def _seeded_generator(seed: int = 0) -> torch.Generator:
    """DataLoaders get their own generator so that evaluation never consumes the global RNG."""
    return torch.Generator().manual_seed(seed)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def encode_video_set(model: Any, collection: Any, video_ids: list[str], device: torch.device, batch_size: int,
                     num_workers: int = 0, amp: str = "none", progress: bool = True) -> Any:
    """Encode all videos in batches; returns one VideoEncoding (Nv, ...) on ``device``."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ralbook.data import VideoDataset, collate_videos

    loader = DataLoader(VideoDataset(collection, video_ids), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_videos, generator=_seeded_generator())
    parts = []
    for batch in tqdm(loader, desc="encode videos", leave=False, disable=not progress):
        batch = _to_device(batch, device)
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
        from ralbook.errors import shorten

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
    from ralbook.checkpoint import check_finite_state

    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ralbook.data import QueryDataset, collate_queries

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
                batch = _to_device(batch, device)
                with autocast(device, amp):
                    queries = model.encode_queries(batch["query_feats"], batch["query_mask"])
                    rows = score_rows(model, queries, videos, video_chunk)
                acc.add(rows, rel, positions)
    finally:
        model.train(was_training)
    return acc.result(cap_ids, video_ids, split)


# ----------------------------------------------------------------------------- loading models


def model_from_checkpoint(path: Union[str, Path], preset_name: Optional[str] = None, cfg: Optional[Config] = None,
                          adjust: Optional[Callable[[Config], Config]] = None) -> tuple[Config, Any, str]:
    """(config, model, kind) from a ralbook checkpoint (config inside) or the authors' file.

    For the authors' file the configuration is ``cfg`` or the preset ``preset_name``. ``adjust``
    edits the configuration before the model is built (command-line overrides). ``kind`` is
    ``ralbook`` or ``reference``.
    """
    from ralbook.checkpoint import config_of, load_file, load_reference, validate_ralbook
    from ralbook.model import build_model

    obj = load_file(path)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("ralbook"):
        cfg = config_of(validate_ralbook(obj, path), path)
        cfg = adjust(cfg) if adjust else cfg
        model = build_model(cfg.model)
        load_model_state(model, obj["model"], path)
        return cfg, model, "ralbook"
    if cfg is None:
        if not preset_name:
            raise CheckpointError(f"{path} is not a ralbook checkpoint (the authors' format?): name its "
                                  "configuration with --preset tvr|act|cha")
        try:
            cfg = preset(preset_name)
        except KeyError as err:
            raise RalbookError(str(err)) from err
    cfg = adjust(cfg) if adjust else cfg
    if cfg.model.backbone != "gmmformer_v2":  # MS-SL's and GMMFormer's own files hold the bare backbone
        cfg.model.csa = cfg.model.word_confidence = cfg.model.msra = False
    model = build_model(cfg.model)
    load_reference(model, obj)
    return cfg, model, "reference"


def load_model_state(model: torch.nn.Module, state: dict[str, Tensor], source: Any) -> None:
    """load_state_dict with a CheckpointError that names the file and the mismatching tensors;
    NonFiniteError when a weight is NaN or infinite."""
    from ralbook.checkpoint import check_finite_state

    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint {source}: 'model' is not a dict of tensors "
                              f"(got {type(state).__name__})")
    check_finite_state(state, f"checkpoint {source}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {source} does not fit the model: {str(err).splitlines()[0]} "
                              f"({' '.join(str(err).split())[:400]})") from err


def require_data_root(cfg: Config) -> None:
    """The paper presets name no data folder (and ``clip`` no collection): the user must give them."""
    if not cfg.data.data_root:
        raise RalbookError(f"no data root for collection {cfg.data.collection!r}: pass --data-root ROOT (the folder "
                           f"that holds {cfg.data.collection}/) or set data.data_root")
    if not cfg.data.collection:
        raise RalbookError("no collection named: pass --collection NAME (the folder under the data root)")


def check_dims(cfg: Config, collection: Any) -> None:
    """The model's input sizes must match the collection's features."""
    for name, want, have in (("visual", cfg.model.visual_dim, collection.visual_dim),
                             ("text", cfg.model.text_dim, collection.text_dim)):
        if want != have:
            raise CheckpointError(f"the model expects {name} features of size {want}, but collection "
                                  f"{cfg.data.collection!r} has {have} (wrong --preset or --feature?)")


# ----------------------------------------------------------------------------- command line


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by train and evaluate that point at the data."""
    parser.add_argument("--data-root", help="folder holding COLLECTION/ (default: from the preset)")
    parser.add_argument("--collection", help="collection name, e.g. tvr, activitynet, charades, demo")
    parser.add_argument("--feature", help="visual feature folder under FeatureData/")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def apply_data_arguments(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply --data-root/--collection/--feature/--device/--set to a config (errors as RalbookError)."""
    assignments = []
    for flag, key in (("data_root", "data.data_root"), ("collection", "data.collection"),
                      ("feature", "data.feature"), ("device", "train.device")):
        value = getattr(args, flag, None)
        if value is not None:
            assignments.append(f"{key}={json.dumps(value)}")
    for assignment in assignments + list(getattr(args, "overrides", []) or []):
        try:
            cfg = cfg.override(assignment)
        except (KeyError, ValueError) as err:
            raise RalbookError(f"bad setting {assignment!r}: {err}") from err
    return cfg


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="best.pt/last.pt of a run, or the authors' checkpoint")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="configuration of an authors' checkpoint (ralbook checkpoints carry their own)")
    parser.add_argument("--split", default="test", help="caption file to evaluate (default test)")
    parser.add_argument("--relevant", help="optional file: caption id -> relevant video ids (JSON or text lines)")
    parser.add_argument("--json", help="write metrics and per-query ranks / top-10 ids to this JSON file")
    parser.add_argument("--index", help="two-stage retrieval over this index folder (see `ralbook index`)")
    parser.add_argument("--rerank", type=int, default=200, metavar="K",
                        help="with --index: fused score for the K best videos of the clip-scale stage")
    add_data_arguments(parser)


def run_evaluate(args: argparse.Namespace) -> int:
    from ralbook.data import Collection

    cfg, model, kind = model_from_checkpoint(args.checkpoint, args.preset,
                                             adjust=lambda c: apply_data_arguments(c, args))
    if kind == "ralbook" and args.preset:
        warnings.warn(f"{args.checkpoint} carries its own configuration; --preset {args.preset} is ignored")
    device = resolve_device(cfg.train.device)
    require_data_root(cfg)
    collection = Collection.from_config(cfg.data)
    check_dims(cfg, collection)
    model.to(device)
    if getattr(args, "index", None):
        from ralbook.index import run_index_evaluation

        return run_index_evaluation(args, model, cfg, collection)
    print(describe_amp(cfg.train.amp, device), flush=True)
    from ralbook.runtime import use_bars

    result = evaluate(model, collection, args.split, cfg, device, relevant=args.relevant,
                      progress=not args.no_progress and use_bars(),  # no bars in log files
                      source=f"checkpoint {args.checkpoint}")
    print(format_metrics(result, title=f"{cfg.data.collection} {args.split}: {len(result.cap_ids)} queries x "
                                       f"{len(result.video_ids)} videos ({kind} checkpoint {args.checkpoint})"))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=1))
    return 0
