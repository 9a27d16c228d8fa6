"""Analyses behind notebooks 03-05: numbers computed from scores, ranks, sigmas and word weights.

Everything here is plain numpy/torch so it is tested on synthetic arrays; the notebooks only
call these functions and plot what they return. Functions that need a trained model take it as
an argument together with a :class:`ralbook.data.Collection` and never train anything.

Conventions:

* A *sigma summary* turns a per-dimension ``log_sigma`` (N, d) into one number per instance:
  ``exp(mean_d log_sigma)``, the per-dimension scale of the isotropic Gaussian with the same
  entropy. Geometric rather than arithmetic mean, because entropy (and the KL terms of L_DA)
  depend on ``sum log_sigma``.
* A query's sigma is the sigma of the support set made of that query alone (docs/method.md#msra-multimodal-semantic-robust-alignment with
  one query per set), so ambiguity and length can be studied per caption.
* *Relative* word confidence is ``g_t * n_words``: 1 means "as much as a uniform weight", which
  makes words of queries of different lengths comparable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from scipy import stats

from ralbook.data.datasets import (QueryDataset, TrainDataset, VideoDataset, batched, collate_queries, collate_train,
                                   collate_videos)
from ralbook.data.features import bin_rows
from ralbook.runtime.device import to_device
from ralbook.retrieval.moments import _word_frame_matrix


# Edges of the rank histogram: rank 1, 2-5, 6-10, 11-50, 51-100, then the rest (upper edge exclusive).
DEFAULT_RANK_EDGES: tuple[int, ...] = (1, 2, 6, 11, 51, 101)


# ----------------------------------------------------------------------------- statistics


def auc(positive: Iterable[float], negative: Iterable[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counted half.

    This is the Mann-Whitney U statistic divided by ``n_pos * n_neg`` (the area under the ROC
    curve), computed from average ranks in O(n log n). 0.5 means the score does not separate
    the groups; 1.0 means every positive scores above every negative.
    """
    pos = np.asarray(list(positive) if not isinstance(positive, np.ndarray) else positive, dtype=np.float64).ravel()
    neg = np.asarray(list(negative) if not isinstance(negative, np.ndarray) else negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"auc needs both groups non-empty; got {pos.size} positives and {neg.size} negatives")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("auc got NaN or infinite scores")
    ranks = stats.rankdata(np.concatenate([pos, neg]), method="average")
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def auc_from_labels(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """:func:`auc` with the two groups given by a boolean mask over one score array."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    mask = np.asarray(is_positive, dtype=bool).ravel()
    if scores.shape != mask.shape:
        raise ValueError(f"scores has {scores.size} entries but is_positive has {mask.size}")
    return auc(scores[mask], scores[~mask])


def describe(values: Iterable[float]) -> dict[str, float]:
    """Count, mean, std, median and 5/95 percentiles: one row of a summary table."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "median": float("nan"),
                "p05": float("nan"), "p95": float("nan")}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "p05": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}


def describe_by_group(values: np.ndarray, groups: Sequence[Any]) -> dict[Any, dict[str, float]]:
    """:func:`describe` for each distinct group label, groups in sorted order."""
    values = np.asarray(values, dtype=np.float64).ravel()
    groups_arr = np.asarray(groups)
    if groups_arr.shape[0] != values.shape[0]:
        raise ValueError(f"{values.shape[0]} values but {groups_arr.shape[0]} group labels")
    return {g.item() if hasattr(g, "item") else g: describe(values[groups_arr == g])
            for g in sorted(set(groups_arr.tolist()))}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties averaged); NaN when either side is constant."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths, got {x.size} and {y.size}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def binned_means(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard error of y for each distinct value of x (e.g. sigma per query length)."""
    x = np.asarray(x).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"binned_means needs equal lengths, got {x.size} and {y.size}")
    keys = np.unique(x)
    means = np.array([y[x == k].mean() for k in keys])
    sems = np.array([y[x == k].std() / np.sqrt((x == k).sum()) for k in keys])
    return keys, means, sems


# ----------------------------------------------------------------------------- sigma


def sigma_summary(log_sigma: torch.Tensor | np.ndarray) -> np.ndarray:
    """One sigma per instance: exp(mean over dimensions of log_sigma); (N, d) -> (N,)."""
    ls = log_sigma.detach().cpu().double().numpy() if isinstance(log_sigma, torch.Tensor) else np.asarray(
        log_sigma, dtype=np.float64)
    if ls.ndim != 2:
        raise ValueError(f"log_sigma must be (N, d); got shape {ls.shape}")
    return np.exp(ls.mean(axis=1))


# ----------------------------------------------------------------------------- projection


@dataclass
class Projection:
    """A fitted linear 2-D (or k-D) projection: coordinates = (x - mean) @ components.T."""

    mean: np.ndarray               # (d,)
    components: np.ndarray         # (k, d), orthonormal rows
    explained_variance_ratio: np.ndarray  # (k,)

    def transform(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        arr = _as_numpy(x)
        if arr.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"points have {arr.shape[-1]} dims, the projection was fitted on {self.mean.shape[0]}")
        return (arr - self.mean) @ self.components.T


def fit_pca(points: np.ndarray | torch.Tensor, n_components: int = 2) -> Projection:
    """Principal axes of the points (N, d) via SVD of the centred data; signs fixed for reproducibility."""
    x = _as_numpy(points)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"fit_pca needs at least 2 points of shape (N, d); got {x.shape}")
    k = min(n_components, x.shape[1], x.shape[0])
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:k]
    # make the largest-magnitude loading of each axis positive so the picture does not flip between runs
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    var = s ** 2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return Projection(mean, comps, ratio)


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def sample_gaussian(mu: torch.Tensor, log_sigma: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k proxies mu + eps * sigma per instance, (N, d) -> (N, k, d), from a private seeded generator."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn(mu.shape[0], k, mu.shape[1], generator=gen, dtype=torch.float32).to(mu.dtype)
    return mu.unsqueeze(1) + eps.to(mu.device) * log_sigma.exp().unsqueeze(1)


# ----------------------------------------------------------------------------- ranks and examples


def rank_histogram(ranks: np.ndarray, edges: Sequence[int] = DEFAULT_RANK_EDGES) -> tuple[list[str], np.ndarray]:
    """Counts of ranks in [edges[i], edges[i+1]) plus a last open bin [edges[-1], inf).

    Returns bin labels like ``"1"``, ``"2-5"``, ``">100"`` and the counts; they sum to len(ranks).
    """
    r = np.asarray(ranks).ravel()
    if r.size and r.min() < 1:
        raise ValueError(f"ranks are 1-based; got a minimum of {r.min()}")
    edges = list(edges)
    if edges != sorted(set(edges)) or edges[0] < 1:
        raise ValueError(f"edges must be increasing integers >= 1; got {edges}")
    labels, counts = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        labels.append(str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}")
        counts.append(int(((r >= lo) & (r < hi)).sum()))
    labels.append(f">{edges[-1] - 1}")
    counts.append(int((r >= edges[-1]).sum()))
    return labels, np.asarray(counts)


def log_rank_edges(n_videos: int) -> list[int]:
    """Bin edges 1, 2, 4, 8, ... doubling up to ``n_videos + 1``: logarithmic bins that cover every rank.

    With :func:`rank_histogram` the bins are [1, 2), [2, 4), [4, 8), ...; a random ranking puts
    ``(hi - lo) / n_videos`` of the queries in bin [lo, hi) (see :func:`chance_bin_shares`).
    """
    if n_videos < 1:
        raise ValueError(f"n_videos must be >= 1, got {n_videos}")
    edges = [1]
    while edges[-1] <= n_videos:
        edges.append(min(2 * edges[-1], n_videos + 1))
    return edges


def chance_bin_shares(edges: Sequence[int], n_videos: int) -> np.ndarray:
    """Share (%) of queries a uniformly random ranking puts in each bin [edges[i], edges[i+1])."""
    return 100.0 * np.diff(np.asarray(edges, dtype=float)) / n_videos


def showcase_index(ranks: np.ndarray, eligible: Optional[np.ndarray] = None) -> int:
    """The query of median rank among the eligible ones (ties broken by position): a typical example.

    Picking the median rather than a success shows what the model usually does; the lower median
    is taken for an even count, so the choice is reproducible.
    """
    r = np.asarray(ranks).ravel()
    idx = np.arange(r.size) if eligible is None else np.flatnonzero(np.asarray(eligible, dtype=bool))
    if not idx.size:
        raise ValueError("no eligible query to pick from")
    order = idx[np.lexsort((idx, r[idx]))]
    return int(order[(order.size - 1) // 2])


def select_examples(ranks: np.ndarray, n: int, kind: str = "success", seed: int = 0) -> np.ndarray:
    """Indices of queries to show: ``success`` = rank 1 (random sample), ``failure`` = worst ranks.

    Failures are the n largest ranks (ties broken by index, so the choice is reproducible);
    successes are drawn with a seeded generator so the gallery is not always the first captions.
    """
    r = np.asarray(ranks).ravel()
    if kind == "success":
        hits = np.flatnonzero(r == 1)
        if hits.size <= n:
            return hits
        return np.sort(np.random.default_rng(seed).choice(hits, size=n, replace=False))
    if kind == "failure":
        order = np.lexsort((np.arange(r.size), -r))
        order = order[r[order] > 1]
        return order[:n]
    raise ValueError(f"kind must be 'success' or 'failure', got {kind!r}")


# ----------------------------------------------------------------------------- training history


def training_history(records: Sequence[dict[str, Any]], kind: str = "fused",
                     skip: Sequence[str] = ("total",)) -> tuple[list[int], dict[str, list[float]], list[float]]:
    """(epochs, loss part -> per-epoch means, validation SumR of ``kind``) from a run's metrics.jsonl records.

    Parts absent from an epoch (e.g. a term switched on later) are NaN there, so curves keep their length.
    """
    epochs = [int(r["epoch"]) for r in records]
    names = list(dict.fromkeys(k for r in records for k in r.get("loss", {}) if k not in skip))
    losses = {n: [float(r.get("loss", {}).get(n, float("nan"))) for r in records] for n in names}
    sumr = [float(r.get("val", {}).get(kind, {}).get("SumR", float("nan"))) for r in records]
    return epochs, losses, sumr


# ----------------------------------------------------------------------------- example tables


def example_rows(indices: Sequence[int], ranks: np.ndarray, topk_ids: Sequence[Sequence[str]],
                 cap_ids: Sequence[str], texts: dict[str, str], video_of: dict[str, str] | Any,
                 k: int = 3) -> list[dict[str, Any]]:
    """One row per chosen query: caption, its video, its rank and the top-k videos (the right one starred)."""
    rows = []
    for i in indices:
        cap = cap_ids[i]
        gt = video_of[cap] if isinstance(video_of, dict) else video_of(cap)
        top = [f"*{v}*" if v == gt else v for v in list(topk_ids[i])[:k]]
        rows.append({"cap_id": cap, "caption": texts.get(cap, ""), "video": gt, "rank": int(ranks[i]),
                     f"top-{k}": " ".join(top)})
    return rows


# ----------------------------------------------------------------------------- word confidence


def relative_confidence(confidence: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """g_t * (number of valid words): 1 = uniform share; padding stays 0. (Nq, Lq) -> (Nq, Lq)."""
    g = _as_numpy(confidence)
    m = _as_numpy(mask)
    if g.shape != m.shape:
        raise ValueError(f"confidence {g.shape} and mask {m.shape} differ in shape")
    return g * m.sum(axis=1, keepdims=True) * m


def split_by_word_class(values: np.ndarray, words: Sequence[Sequence[str]],
                        fillers: set[str] | frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pool per-word values (Nq, Lq) into (filler values, content values) using each query's words.

    ``words[i]`` lists the words of query i, one per valid token row; rows past ``len(words[i])``
    (padding, or words cut by the 30-token limit) are ignored.
    """
    values = _as_numpy(values)
    if len(words) != values.shape[0]:
        raise ValueError(f"{values.shape[0]} rows of values but words for {len(words)} queries")
    filler_vals, content_vals = [], []
    for row, ws in zip(values, words):
        n = min(len(ws), row.shape[0])
        for t in range(n):
            (filler_vals if ws[t].lower() in fillers else content_vals).append(row[t])
    return np.asarray(filler_vals), np.asarray(content_vals)


def values_by_word_type(values: np.ndarray, words: Sequence[Sequence[str]],
                        word_type: dict[str, str]) -> dict[str, np.ndarray]:
    """Pool per-word values (Nq, Lq) by the type of each word (e.g. filler / generic / specific).

    Words missing from ``word_type`` are pooled under ``"unknown"``; types are listed in first-seen order.
    """
    values = _as_numpy(values)
    if len(words) != values.shape[0]:
        raise ValueError(f"{values.shape[0]} rows of values but words for {len(words)} queries")
    pooled: dict[str, list[float]] = {}
    for row, ws in zip(values, words):
        for t in range(min(len(ws), row.shape[0])):
            pooled.setdefault(word_type.get(ws[t].lower(), "unknown"), []).append(row[t])
    return {k: np.asarray(v) for k, v in pooled.items()}


def per_query_filler_auc(values: np.ndarray, words: Sequence[Sequence[str]],
                         fillers: set[str] | frozenset[str]) -> np.ndarray:
    """For each query holding both kinds of words: AUC of its values, content (positive) vs filler.

    A within-query comparison, immune to the softmax's dependence on query length. Queries
    without a filler or without a content word give NaN.
    """
    values = _as_numpy(values)
    out = np.full(values.shape[0], np.nan)
    for i, (row, ws) in enumerate(zip(values, words)):
        n = min(len(ws), row.shape[0])
        is_filler = np.array([w.lower() in fillers for w in ws[:n]], dtype=bool)
        if is_filler.any() and (~is_filler).any():
            out[i] = auc(row[:n][~is_filler], row[:n][is_filler])
    return out


# ----------------------------------------------------------------------------- model probes


@torch.no_grad()
def query_sigmas(model: torch.nn.Module, query_feats: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """log_sigma (Nq, d) of each query taken alone as a support set (singleton sets)."""
    queries = model.encode_queries(query_feats, query_mask)
    labels = torch.arange(query_feats.shape[0], device=query_feats.device)
    return model.text_distribution(queries, labels, query_feats.shape[0])["log_sigma"]


@torch.no_grad()
def word_frame_similarity(model: torch.nn.Module, query_feats: torch.Tensor, query_mask: torch.Tensor,
                          clip_feats: torch.Tensor, frame_feats: torch.Tensor,
                          frame_mask: torch.Tensor) -> np.ndarray:
    """Cosine similarity of each CSA word token with each valid frame token of one video.

    Inputs are one query (1, Lq, Dt) and one video (1, ., Dv); returns (n_words, n_frames), the
    matrix whose row-wise max, weighted by word confidence, is the frame-scale score.
    """
    q = model.encode_queries(query_feats, query_mask)
    v = model.encode_videos(clip_feats, frame_feats, frame_mask)
    return _word_frame_matrix(q, 0, v, 0)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class DistributionSet:
    """MSRA Gaussians of a set of videos: per video, per video's support set, per single query (CPU tensors)."""

    video_ids: list[str]
    video_mu: torch.Tensor            # (Nv, d)
    video_log_sigma: torch.Tensor     # (Nv, d)
    support_mu: torch.Tensor          # (Nv, d) support set = all captions of the video
    support_log_sigma: torch.Tensor   # (Nv, d)
    cap_ids: list[str]
    query_video: np.ndarray           # (Nq,) index into video_ids
    query_mu: torch.Tensor            # (Nq, d) support set = the caption alone
    query_log_sigma: torch.Tensor     # (Nq, d)
    query_length: np.ndarray          # (Nq,) tokens used (after the 30-token cut)


@torch.no_grad()
def collect_distributions(model: torch.nn.Module, collection: Any, video_ids: Sequence[str], split: str,
                          batch_size: int = 32, progress: bool = True) -> DistributionSet:
    """Run the MSRA heads over videos and their captions of ``split``, in training-style batches
    (each video with all its captions), as the support sets are formed in training."""
    from tqdm.auto import tqdm


    device = _device_of(model)
    was_training = model.training
    model.eval()
    dataset = TrainDataset(collection, list(video_ids), split=split)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("vmu", "vls", "smu", "sls", "qmu", "qls")}
    cap_ids: list[str] = []
    owners: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="distributions", leave=False,
                          disable=not progress):
            batch = to_device(collate_train([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]),
                        device)
            videos = model.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
            queries = model.encode_queries(batch["query_feats"], batch["query_mask"])
            labels = batch["labels"]
            v = model.video_distribution(videos)
            t = model.text_distribution(queries, labels, len(videos))
            q = model.text_distribution(queries, torch.arange(labels.shape[0], device=device), labels.shape[0])
            for key, value in (("vmu", v["mu"]), ("vls", v["log_sigma"]), ("smu", t["mu"]),
                               ("sls", t["log_sigma"]), ("qmu", q["mu"]), ("qls", q["log_sigma"])):
                parts[key].append(value.float().cpu())
            cap_ids.extend(batch["cap_ids"])
            owners.append(labels.cpu().numpy() + start)
            lengths.append(batch["query_mask"].sum(dim=1).cpu().numpy().astype(int))
    finally:
        model.train(was_training)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return DistributionSet(list(video_ids), cat["vmu"], cat["vls"], cat["smu"], cat["sls"], cap_ids,
                           np.concatenate(owners), cat["qmu"], cat["qls"], np.concatenate(lengths))


def projection_points(dist: DistributionSet, video_indices: Sequence[int], n_samples: int,
                      seed: int = 0) -> dict[str, Any]:
    """Means and sampled proxies of some videos and of their single captions, projected to 2-D.

    The principal axes are fitted on the means only, so the picture shows how the instances are laid
    out and how far their proxies spread around them (fitting on the proxies would let the noise
    choose the axes). Returns the keyword arguments of :func:`ralbook.plots.projection_plot`.
    """
    mus, log_sigmas, owner, kind = [], [], [], []
    for o, v in enumerate(video_indices):
        mus.append(dist.video_mu[v])
        log_sigmas.append(dist.video_log_sigma[v])
        owner.append(o)
        kind.append("video")
        for q in np.flatnonzero(dist.query_video == v):
            mus.append(dist.query_mu[q])
            log_sigmas.append(dist.query_log_sigma[q])
            owner.append(o)
            kind.append("query")
    mu, log_sigma = torch.stack(mus), torch.stack(log_sigmas)
    samples = sample_gaussian(mu, log_sigma, n_samples, seed).reshape(-1, mu.shape[1])
    proj = fit_pca(mu)
    return {"means": proj.transform(mu), "mean_owner": owner, "mean_kind": kind,
            "proxies": proj.transform(samples), "proxy_owner": np.repeat(owner, n_samples).tolist(),
            "proxy_kind": np.repeat(kind, n_samples).tolist(),
            "owner_names": [dist.video_ids[v] for v in video_indices],
            "explained": proj.explained_variance_ratio.tolist()}


@torch.no_grad()
def collect_word_confidence(model: torch.nn.Module, collection: Any, cap_ids: Sequence[str],
                            batch_size: int = 256, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Word-confidence weights g (Nq, Lmax) and the token mask (Nq, Lmax) of the given captions."""
    from tqdm.auto import tqdm


    device = _device_of(model)
    was_training = model.training
    model.eval()
    dataset = QueryDataset(collection, list(cap_ids))
    confs, masks = [], []
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="word confidence", leave=False,
                          disable=not progress):
            batch = to_device(collate_queries([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]),
                        device)
            confs.append(model.word_confidence(batch["query_feats"], batch["query_mask"]).float().cpu().numpy())
            masks.append(batch["query_mask"].float().cpu().numpy())
    finally:
        model.train(was_training)
    width = max(c.shape[1] for c in confs)
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])))  # noqa: E731
    return np.concatenate([pad(c) for c in confs]), np.concatenate([pad(m) for m in masks])


@torch.no_grad()
def query_video_similarity(model: torch.nn.Module, collection: Any, cap_id: str,
                           video_id: Optional[str] = None) -> dict[str, Any]:
    """Word-by-frame cosine matrix of one caption against one video (default: its own), with its confidences.

    Returns ``similarity`` (n_words, n_frame_rows), ``confidence`` (n_words,), ``n_raw_frames`` and
    ``video_id``; frame rows are those of :func:`ralbook.data.video_inputs` (binned beyond 128).
    """

    device = _device_of(model)
    video_id = video_id or collection.video_of(cap_id)
    was_training = model.training
    model.eval()
    try:
        q = to_device(collate_queries([QueryDataset(collection, [cap_id])[0]]), device)
        v = to_device(collate_videos([VideoDataset(collection, [video_id])[0]]), device)
        sim = word_frame_similarity(model, q["query_feats"], q["query_mask"], v["clip_feats"], v["frame_feats"],
                                    v["frame_mask"])
        conf = model.word_confidence(q["query_feats"], q["query_mask"])[0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return {"similarity": sim, "confidence": conf[: sim.shape[0]], "video_id": video_id,
            "n_raw_frames": int(collection.raw_frames(video_id).shape[0])}


@torch.no_grad()
def moment_hit_rates(model: torch.nn.Module, collection: Any, cap_ids: Sequence[str], truth: Any,
                     fillers: set[str] | frozenset[str], max_frames: int = 128,
                     batch_size: int = 64) -> dict[str, float]:
    """Share of words whose best frame (in their own video) lies in the caption's ground-truth moment.

    Reported separately for content and filler words, next to ``chance``: the mean share of frame
    rows inside the moment (what a word pointing at a random frame would score). ``truth`` is a
    :class:`ralbook.demo.GroundTruth`; captions it does not know are skipped.
    """

    device = _device_of(model)
    known = [c for c in cap_ids if c in truth.captions]
    hits: dict[str, list[float]] = {"content": [], "filler": []}
    chance = []
    was_training = model.training
    model.eval()
    try:
        for chunk in batched(known, batch_size):
            videos = list(dict.fromkeys(collection.video_of(c) for c in chunk))
            qds, vds = QueryDataset(collection, chunk), VideoDataset(collection, videos)
            qb = to_device(collate_queries([qds[i] for i in range(len(qds))]), device)
            vb = to_device(collate_videos([vds[i] for i in range(len(vds))]), device)
            with torch.no_grad():
                q = model.encode_queries(qb["query_feats"], qb["query_mask"])
                v = model.encode_videos(vb["clip_feats"], vb["frame_feats"], vb["frame_mask"])
            for i, cap in enumerate(chunk):
                gt, j = truth.captions[cap], videos.index(collection.video_of(cap))
                sim = _word_frame_matrix(q, i, v, j)
                lo, hi = frame_span_to_rows((gt.start, gt.end), collection.n_frames(videos[j]), max_frames)
                best = sim.argmax(axis=1)
                inside = (best >= lo) & (best < hi)
                for t, w in enumerate(gt.words[: len(best)]):
                    hits["filler" if w.lower() in fillers else "content"].append(float(inside[t]))
                chance.append((hi - lo) / sim.shape[1])
    finally:
        model.train(was_training)
    return {"content_hit_rate": float(np.mean(hits["content"])) if hits["content"] else float("nan"),
            "filler_hit_rate": float(np.mean(hits["filler"])) if hits["filler"] else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan"), "n_captions": len(chance)}


def moment_hit_share(similarity: np.ndarray, span: tuple[float, float]) -> float:
    """Share of words (rows) whose best frame row lies in ``span`` = [start, end) (from :func:`frame_span_to_rows`)."""
    best = np.asarray(similarity).argmax(axis=1)
    return float(np.mean((best >= span[0]) & (best < span[1]))) if best.size else float("nan")


def frame_span_to_rows(span: tuple[int, int], n_frames: int, max_frames: int = 128) -> tuple[float, float]:
    """Map a raw frame span [start, end) to the frame rows the model sees, as [first_row, last_row + 1).

    Videos of at most ``max_frames`` frames keep their rows. Longer ones are binned (docs/method.md#inputs):
    a row belongs to the span when the mean raw index of the frames averaged into it lies inside
    [start, end), computed with the same binning as the data layer.
    """
    start, end = span
    if not 0 <= start < end <= n_frames:
        raise ValueError(f"span {span} is not inside a video of {n_frames} frames")
    if n_frames <= max_frames:
        return float(start), float(end)

    centres = bin_rows(np.arange(n_frames, dtype=np.float32)[:, None], max_frames)[:, 0]
    inside = np.flatnonzero((centres >= start - 1e-4) & (centres <= end - 1 + 1e-4))
    if inside.size == 0:  # a span narrower than one bin: the row holding its centre
        row = int(np.argmin(np.abs(centres - (start + end - 1) / 2)))
        return float(row), float(row + 1)
    return float(inside[0]), float(inside[-1] + 1)


def optional_float(x: Optional[float]) -> Optional[float]:
    """A float fit for JSON: NaN and infinities become None."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
