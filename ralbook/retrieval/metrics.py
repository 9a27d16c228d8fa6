"""Ranks, recall and chance levels, and the relevance files: the leaf every evaluation path shares."""
from __future__ import annotations

import json
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ralbook.errors import DataError


RECALL_AT: tuple[int, ...] = (1, 5, 10, 100)


METRIC_NAMES: tuple[str, ...] = tuple(f"R@{k}" for k in RECALL_AT) + ("SumR",)


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


@dataclass
class GroundTruth:
    """Which relevance a ranking was scored against: each caption's own video, or lists from ``file``
    (for ``covered`` of ``n_captions`` captions; the others keep their own video)."""

    file: Optional[str]
    covered: int
    n_captions: int
    unknown: int = 0  # ids in the file that are no caption of the split

    def describe(self) -> str:
        if not self.file:
            return "ground truth: each caption's own video (no --relevant file)"
        return (f"ground truth: relevance lists of {self.file} for {self.covered} of {self.n_captions} captions"
                + (" (the rest: their own video)" if self.covered < self.n_captions else ""))

    def to_json(self) -> dict[str, Any]:
        return {"relevant_file": self.file, "captions_with_lists": self.covered, "n_captions": self.n_captions,
                "ids_not_in_split": self.unknown}


def check_relevance(extra: Optional[dict[str, list[str]]], cap_ids: Sequence[str], split: str,
                    source: str = "relevance file") -> GroundTruth:
    """How a relevance file covers a split's captions; DataError when it matches none of them (another
    split's file, or ids of another kind), naming the file, the split and the counts."""
    if extra is None:
        return GroundTruth(None, 0, len(cap_ids))
    caps = set(cap_ids)
    covered = sum(1 for c in extra if c in caps)
    unknown = len(extra) - covered
    if covered == 0:
        example = next(iter(extra), "none")
        raise DataError(f"{source}: none of its {len(extra)} caption ids is a caption of split {split!r} "
                        f"({len(caps)} captions, e.g. {next(iter(cap_ids), 'none')!r}; the file has e.g. "
                        f"{example!r}): a file of another split?")
    return GroundTruth(str(source), covered, len(caps), unknown)
