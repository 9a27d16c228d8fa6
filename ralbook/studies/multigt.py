"""Recall against every truthful match: an ambiguous caption's top-1 may be right without being the annotated video.

Why: a demo caption such as "a person handles something outdoors" truthfully describes several videos of the
split (``GroundTruth/relevant_<split>.json`` lists them). Standard R@K counts only the annotated video, so a
model that ranks another truthful video first is scored as wrong, and a "failures" list built on standard
ranks shows correct retrievals. This module gives the three numbers 03 reports side by side - standard
R@K, R@K against all truthful matches, and the ceiling an ideal model reaches on standard R@K - and sorts the
top-1 retrievals into annotated / truthful but not annotated / not truthful.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ralbook.data.demo import relevant_file
from ralbook.errors import DataError
from ralbook.retrieval.metrics import RECALL_AT, read_relevant_file, relevant_indices

__all__ = ["read_truthful", "truthful_relevant", "ideal_recall", "top1_kinds", "TOP1_KINDS"]

TOP1_KINDS: tuple[str, ...] = ("annotated", "truthful, not annotated", "not truthful")


def read_truthful(data_root: str | os.PathLike, collection: str, split: str) -> Optional[dict[str, list[str]]]:
    """Caption id -> every truthful video, from ``<collection>/GroundTruth/relevant_<split>.json``; None without one.

    Generated collections write the file for their evaluation splits; real releases have none.
    """
    path = Path(data_root) / collection / "GroundTruth" / relevant_file(split)
    return read_relevant_file(path) if path.is_file() else None


def truthful_relevant(cap_ids: Sequence[str], own_videos: Sequence[str], video_ids: Sequence[str],
                      truthful: Mapping[str, Sequence[str]], source: str = "relevance file") -> np.ndarray:
    """(n, R) indices of every truthful video of each caption (-1 padded), its own video always included.

    ``truthful`` maps caption id -> video ids (``metrics.read_relevant_file``); a caption it does not name
    keeps only its own video. The own video is added when the file leaves it out, so the truthful rank is
    never worse than the standard one.
    """
    extra = {}
    for cap, own in zip(cap_ids, own_videos):
        names = list(truthful.get(cap, [own]))
        extra[cap] = names if own in names else [own, *names]
    return relevant_indices(cap_ids, own_videos, video_ids, extra, source=source).numpy()


def ideal_recall(n_truthful: Sequence[int], n_videos: int) -> dict[str, float]:
    """Standard R@K (%) and SumR of an ideal model: it ranks a caption's m truthful videos first, in random order.

    The annotated video is then in the top K with probability min(1, K / m); averaged over captions this is
    the ceiling standard recall can reach (the R@1 term is 01's "ideal R@1", the mean of 1 / m).
    """
    m = np.asarray(list(n_truthful), dtype=np.float64)
    if m.size == 0 or (m < 1).any() or (m > n_videos).any():
        raise DataError(f"ideal_recall: need 1 <= truthful videos <= {n_videos} for at least one caption")
    out = {f"R@{k}": float(100.0 * np.mean(np.minimum(1.0, min(k, n_videos) / m))) for k in RECALL_AT}
    out["SumR"] = float(sum(out[f"R@{k}"] for k in RECALL_AT))
    return out


def top1_kinds(top1: Sequence[str], own_videos: Sequence[str], truthful: Mapping[str, Sequence[str]],
               cap_ids: Sequence[str]) -> list[str]:
    """Per caption, which kind its top-1 video is: one of :data:`TOP1_KINDS`."""
    if not len(top1) == len(own_videos) == len(cap_ids):
        raise DataError(f"top1_kinds: {len(top1)} top-1 videos, {len(own_videos)} own videos, {len(cap_ids)} captions")
    out = []
    for first, own, cap in zip(top1, own_videos, cap_ids):
        if first == own:
            out.append(TOP1_KINDS[0])
        elif first in truthful.get(cap, ()):
            out.append(TOP1_KINDS[1])
        else:
            out.append(TOP1_KINDS[2])
    return out
