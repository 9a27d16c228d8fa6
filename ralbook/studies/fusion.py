"""The measurements behind 03's sentences about its three scores: fusion, branch mistakes, the frame branch.

Why a module: "the clip and frame branches make different mistakes, which is why RAL fuses them" is a
claim about per-query ranks, and "the frame branch is weak because ..." is a claim about where its words
look. Both are measured here from per-query ranks and score matrices, each number with its interval
(``ralbook.stats``), so the notebook's text can say what the data show and what they cannot decide.

* :func:`branch_comparisons` - fused against each branch, paired over the same queries (SumR, R@1).
* :func:`branch_shares` - share of queries each branch ranks better (clip / frame / tie), with intervals.
* :func:`alpha_sweep` - the fused score re-ranked for a grid of fusion weights, each against the configured one.
* :func:`peak_place` / :func:`word_peak_places` - where each content word's best frame falls: its own
  moment, another moment sharing a concept with it, another moment, or background.
* :func:`gap_by_bins` - the clip-minus-frame per-query gap in terciles of a covariate (video length, the
  caption's filler share), each with its interval, and the last tercile against the first.

Everything here is a pure function of arrays except :func:`word_peak_places`, which runs the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ralbook import stats
from ralbook.errors import DataError
from ralbook.retrieval.metrics import ranks_from_scores
from ralbook.studies.analysis import frame_span_to_rows, query_video_similarity

__all__ = ["ALPHA_GRID", "PEAK_PLACES", "fuse", "ranks_against", "branch_comparisons", "branch_shares",
           "SweepPoint", "alpha_sweep", "best_sweep_point", "peak_place", "word_peak_places", "place_shares",
           "places_vs_chance",
           "per_query_gap", "GapBin", "gap_by_bins"]

ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
PEAK_PLACES: tuple[str, ...] = ("own moment", "other moment sharing a concept", "other moment, no shared concept",
                                "background")


# ----------------------------------------------------------------------------- fusion


def fuse(clip: np.ndarray, frame: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * clip + (1 - alpha) * frame``: the model's fused score for another fusion weight."""
    clip, frame = np.asarray(clip, dtype=np.float64), np.asarray(frame, dtype=np.float64)
    if clip.shape != frame.shape:
        raise DataError(f"fuse: clip scores {clip.shape} and frame scores {frame.shape} must have one shape")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"fuse: alpha must lie in [0, 1], got {alpha}")
    return alpha * clip + (1.0 - alpha) * frame


def ranks_against(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's best-ranked relevant video (the evaluation's rule, ties by video index).

    ``scores`` (n, Nv); ``relevant`` (n, R) video indices, -1 padding (``metrics.relevant_indices``).
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant)
    if scores.ndim != 2 or relevant.ndim != 2 or relevant.shape[0] != scores.shape[0]:
        raise DataError(f"ranks_against: need scores (n, Nv) and relevant (n, R) for the same n queries, got "
                        f"{scores.shape} and {relevant.shape}")
    return ranks_from_scores(torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64)),
                             torch.from_numpy(relevant.astype(np.int64))).numpy()


def branch_comparisons(ranks: Mapping[str, np.ndarray], metrics: Sequence[str] = ("SumR", "R@1"),
                       n_boot: int = stats.N_BOOT, seed: int = 0) -> list[stats.Comparison]:
    """Fused against clip and against frame on each metric, paired over the same queries."""
    out = []
    for metric in metrics:
        for branch in ("clip", "frame"):
            out.append(stats.compare_rankings(ranks["fused"], ranks[branch], metric, name_a="the fused score",
                                              name_b=f"the {branch} branch", n_boot=n_boot, seed=seed))
    return out


def branch_shares(ranks_clip: np.ndarray, ranks_frame: np.ndarray, n_boot: int = stats.N_BOOT,
                  seed: int = 0) -> dict[str, stats.Estimate]:
    """Percent of queries whose video the clip branch ranks higher, the frame branch ranks higher, or both tie.

    Why: branches that "make different mistakes" means the frame branch wins a share of the queries the
    clip branch loses; a share near 0 says it only adds noise. Intervals: bootstrap over queries.
    """
    c = np.asarray(ranks_clip, dtype=np.float64)
    f = np.asarray(ranks_frame, dtype=np.float64)
    if c.shape != f.shape or c.ndim != 1 or c.size == 0:
        raise DataError(f"branch_shares: need one clip and one frame rank per query, got {c.shape} and {f.shape}")
    kinds = {"clip better": c < f, "frame better": f < c, "tie": c == f}
    return {name: stats.bootstrap_mean(100.0 * hit, name=name, metric="% of queries", unit="queries",
                                       n_boot=n_boot, seed=seed)
            for name, hit in kinds.items()}


@dataclass(frozen=True)
class SweepPoint:
    """One fusion weight: its metric value and the paired comparison with the configured weight."""

    alpha: float
    value: float
    vs_model: stats.Comparison


def alpha_sweep(clip: np.ndarray, frame: np.ndarray, relevant: np.ndarray, model_alpha: float,
                alphas: Sequence[float] = ALPHA_GRID, metric: str = "SumR", n_boot: int = stats.N_BOOT,
                seed: int = 0) -> list[SweepPoint]:
    """Re-rank with ``alpha * clip + (1 - alpha) * frame`` for each alpha; each against the configured alpha.

    alpha = 1 is the clip branch alone and 0 the frame branch alone, so the curve says whether any mixture
    beats either branch, and whether the configured weight is where the curve peaks, with paired intervals.
    """
    reference = ranks_against(fuse(clip, frame, model_alpha), relevant)
    out = []
    for alpha in alphas:
        ranks = ranks_against(fuse(clip, frame, float(alpha)), relevant)
        comparison = stats.compare_rankings(ranks, reference, metric, name_a=f"alpha {alpha:g}",
                                            name_b=f"the configured alpha {model_alpha:g}", n_boot=n_boot, seed=seed)
        out.append(SweepPoint(float(alpha), comparison.value_a, comparison))
    return out


def best_sweep_point(points: Sequence[SweepPoint]) -> SweepPoint:
    """The sweep point with the highest value (the first one on ties)."""
    if not points:
        raise DataError("best_sweep_point: the sweep is empty")
    return max(points, key=lambda p: p.value)


# ----------------------------------------------------------------------------- the frame branch's words


def peak_place(row: int, moments: Sequence[tuple[float, float]], own: int, shares_concept: Sequence[bool]) -> str:
    """Where a frame row lies: the own moment, another moment (sharing a concept or not), or background.

    ``moments`` are [start, end) frame rows; ``own`` indexes the query's moment; ``shares_concept[k]`` says
    whether moment k shows a concept of the query's moment. A row in two (overlapping) moments counts for
    the own moment first.
    """
    if len(shares_concept) != len(moments) or not 0 <= own < len(moments):
        raise DataError(f"peak_place: {len(moments)} moments, {len(shares_concept)} concept flags, own index {own}")
    inside = [k for k, (s, e) in enumerate(moments) if s <= row < e]
    if own in inside:
        return PEAK_PLACES[0]
    if any(shares_concept[k] for k in inside):
        return PEAK_PLACES[1]
    if inside:
        return PEAK_PLACES[2]
    return PEAK_PLACES[3]


def word_peak_places(model: Any, collection: Any, cap_ids: Sequence[str], truth: Any, fillers: Sequence[str] = (),
                     max_frames: int = 128) -> dict[str, Any]:
    """Per caption: the share of its content words whose best frame (in its own video) lies in each place.

    Returns ``shares`` (n_captions, len(PEAK_PLACES)) with rows summing to 1; ``chance`` (same shape), the
    share of the video's frame rows in each place (where a word pointing at a random frame lands);
    ``cap_ids`` (those with a known moment and at least one content word) and ``other_sharing``
    (n_captions,), whether the video has another moment sharing a concept with the caption's moment.
    Content words are those the ground truth does not type as fillers (and not in ``fillers``).
    """
    filler_words = {w.lower() for w in fillers}
    rows, chance, kept, sharing = [], [], [], []
    for cap in cap_ids:
        gt = truth.captions.get(cap)
        if gt is None:
            continue
        video = truth.videos[gt.video]
        sim = query_video_similarity(model, collection, cap)["similarity"]
        n_rows = sim.shape[1]
        spans = [frame_span_to_rows((m.start, m.end), video.n_frames, max_frames) for m in video.moments]
        own_concepts = set(video.moments[gt.moment].concepts.values())
        shares = [k != gt.moment and bool(own_concepts & set(m.concepts.values())) for k, m in enumerate(video.moments)]
        best = sim.argmax(axis=1)
        counts = np.zeros(len(PEAK_PLACES))
        for t, word in enumerate(gt.words[: sim.shape[0]]):
            if gt.word_types[t] == "filler" or word.lower() in filler_words:
                continue
            counts[PEAK_PLACES.index(peak_place(int(best[t]), spans, gt.moment, shares))] += 1
        if counts.sum() == 0 or n_rows == 0:
            continue
        rows.append(counts / counts.sum())
        places = [PEAK_PLACES.index(peak_place(r, spans, gt.moment, shares)) for r in range(n_rows)]
        chance.append(np.bincount(places, minlength=len(PEAK_PLACES)) / n_rows)
        kept.append(cap)
        sharing.append(any(shares))
    return {"shares": np.array(rows).reshape(-1, len(PEAK_PLACES)),
            "chance": np.array(chance).reshape(-1, len(PEAK_PLACES)), "cap_ids": kept,
            "other_sharing": np.array(sharing, dtype=bool)}


def place_shares(shares: np.ndarray, n_boot: int = stats.N_BOOT, seed: int = 0) -> dict[str, stats.Estimate]:
    """Mean share (%) of content words per place, each with a bootstrap interval over captions."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 2 or shares.shape[1] != len(PEAK_PLACES) or shares.shape[0] == 0:
        raise DataError(f"place_shares: need (n_captions, {len(PEAK_PLACES)}) shares, got {shares.shape}")
    return {place: stats.bootstrap_mean(100.0 * shares[:, k], name=place, metric="% of content words",
                                        unit="captions", n_boot=n_boot, seed=seed)
            for k, place in enumerate(PEAK_PLACES)}


def places_vs_chance(shares: np.ndarray, chance: np.ndarray, n_boot: int = stats.N_BOOT,
                     seed: int = 0) -> dict[str, stats.Comparison]:
    """Per place: content words' share minus the share of frame rows there, paired over captions (points of %).

    Why: a share of words in "another moment sharing a concept" means little alone; a video with long such
    moments draws words there by chance. Above 0 (interval excluding it), words are pulled there.
    """
    shares, chance = np.asarray(shares, dtype=np.float64), np.asarray(chance, dtype=np.float64)
    if shares.shape != chance.shape:
        raise DataError(f"places_vs_chance: word shares {shares.shape} and frame shares {chance.shape} differ")
    return {place: stats.paired_bootstrap(100.0 * shares[:, k], 100.0 * chance[:, k], name_a="content words",
                                          name_b="random frames", metric=f"% in {place}", unit="captions",
                                          n_boot=n_boot, seed=seed)
            for k, place in enumerate(PEAK_PLACES)}


# ----------------------------------------------------------------------------- the gap by covariate


def per_query_gap(ranks_clip: np.ndarray, ranks_frame: np.ndarray, metric: str = "SumR") -> np.ndarray:
    """Per-query clip value minus frame value of ``metric`` (their means are the two branches' metrics)."""
    return (stats.ranking_values(ranks_clip, metric, "per_query_gap", "clip ranks")
            - stats.ranking_values(ranks_frame, metric, "per_query_gap", "frame ranks"))


@dataclass(frozen=True)
class GapBin:
    """One bin of the covariate: its value range (inclusive), and the mean gap with its interval."""

    label: str
    low: float
    high: float
    gap: stats.Estimate


def gap_by_bins(gap: np.ndarray, covariate: np.ndarray, what: str, n_bins: int = 3, n_boot: int = stats.N_BOOT,
                seed: int = 0) -> tuple[list[GapBin], Optional[stats.Comparison]]:
    """The mean per-query gap in ``n_bins`` quantile bins of ``covariate``, and the last bin against the first.

    Bins are cut at the covariate's quantiles; tied values stay in one bin (so bins may differ in size, and
    fewer bins come back when the covariate takes fewer values). The comparison (Welch, unpaired: different
    queries) asks whether the gap grows with the covariate; None with fewer than two bins.
    """
    gap = np.asarray(gap, dtype=np.float64)
    x = np.asarray(covariate, dtype=np.float64)
    if gap.shape != x.shape or gap.ndim != 1 or gap.size == 0:
        raise DataError(f"gap_by_bins: need one gap and one {what} per query, got {gap.shape} and {x.shape}")
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    index = np.searchsorted(edges, x, side="right")  # bin k: edges[k-1] <= x < edges[k] (equal values share a bin)
    bins = []
    for k in np.unique(index):
        members = index == k
        lo, hi = float(x[members].min()), float(x[members].max())
        label = f"{what} {lo:g}-{hi:g}" if lo != hi else f"{what} {lo:g}"
        bins.append(GapBin(label, lo, hi, stats.bootstrap_mean(gap[members], name=label, metric="gap",
                                                               unit="queries", n_boot=n_boot, seed=seed)))
    if len(bins) < 2:
        return bins, None
    first, last = index == index.min(), index == index.max()
    comparison = stats.compare_seeds(gap[last], gap[first], paired=False, name_a=f"the highest {what} bin",
                                     name_b=f"the lowest {what} bin", metric="the clip-minus-frame gap",
                                     unit="queries")
    return bins, comparison
