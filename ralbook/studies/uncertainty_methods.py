"""Uncertainty methods of the benchmark (issue 23): one scalar per query from a trained model, and the
table that says, with 95% intervals over queries, whether each scalar predicts ambiguity, failure and
its own correctness (calibration), and how it compares with the strongest free baseline.

Methods (every scalar oriented so that larger = less trustworthy):

* free baselines, from the query's fused score row alone: ``neg_margin`` (minus best-minus-second),
  ``entropy`` (of the softmax over the gallery at the training temperature), ``neg_top1`` (minus the
  best score), ``length`` (caption tokens, oriented as in ``sigma-report``: longer = more uncertain);
* RAL: ``sigma`` (caption level, mean log sigma of the caption taken alone) and ``proxy_spread``: the
  standard deviation, over the caption's proxies z = mu + eps * sigma, of their similarity with the
  MSRA mean of the caption's top-1 video, in closed form sqrt(sum_d sigma_d^2 mu_v,d^2) (what the K
  sampled proxies estimate);
* MC dropout: T passes with only the dropout layers active; ``mc_score_var`` (variance of the score of
  the deterministic top-1 video) and ``mc_rank_var`` (variance of that video's rank);
* deep ensembles (several checkpoints): ``ensemble_score_var`` (variance across runs of the score of
  the ensemble-mean top-1 video) and ``ensemble_disagreement`` (1 - share of runs whose top-1 is the
  most common top-1);
* ``evidential_u``: u = K / S of a Dirichlet over the top K candidates of the clip-scale first stage,
  with evidence from the fused scores (:func:`ralbook.studies.uncertainty_metrics.dirichlet_from_scores`).

Probabilities for calibration: ``softmax`` (the top-1 video's probability under a softmax over the
gallery with a temperature fitted on the validation split) and ``evidential`` (its expected Dirichlet
probability). Their correctness is a hit at rank 1.

Variances are accumulated relative to the first pass (run), so identical passes give exactly 0.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from ralbook.data.datasets import QueryDataset, collate_queries
from ralbook import stats
from ralbook.errors import DataError, RalbookError, shorten
from ralbook.model.layers import Dropout
from ralbook.retrieval.evaluate import SortedVideos, encode_video_set, evaluate, score_rows
from ralbook.retrieval.index import two_stage_ranks
from ralbook.retrieval.metrics import ranks_from_scores, relevant_indices
from ralbook.studies import uncertainty_metrics as um
from ralbook.studies.analysis import collect_distributions
from ralbook.studies.uncertainty import (DEFAULT_BOOTSTRAP, DEFAULT_TEMPERATURE, mean_log_sigma, softmax_entropy,
                                         top_margin)

FREE_BASELINES: tuple[str, ...] = ("neg_margin", "entropy", "neg_top1", "length")
FAILURE_AT: tuple[int, ...] = (1, 10)
CALIBRATION_BASELINE = "softmax"  # the probability every other one is compared with
DEFAULT_EVIDENTIAL_K = 16
LEVEL = 0.95


# ----------------------------------------------------------------------------- scores of one model


@dataclass
class SplitScores:
    """One model's scores on one split (queries x videos, both in the split's order)."""

    cap_ids: list[str]
    video_ids: list[str]
    fused: np.ndarray      # (Nq, Nv) final ranking score
    clip: np.ndarray       # (Nq, Nv) clip-scale score (the first stage of a two-stage search)
    ranks: np.ndarray      # (Nq,) 1-based fused rank of the relevant video
    targets: np.ndarray    # (Nq,) column of each query's own video
    lengths: np.ndarray    # (Nq,) caption tokens used by the model
    # two-stage scores: (Nq, K) video index of each column per query (fused/clip are then (Nq, K) and
    # ``targets`` is the column of the query's own video among them, -1 when the first stage missed it)
    candidates: Optional[np.ndarray] = None

    def top1_videos(self) -> list[str]:
        """Each query's best-scored video id (ties by column, as the ranks break them)."""
        columns = top1_columns(self.fused)
        if self.candidates is not None:
            columns = self.candidates[np.arange(columns.size), columns]
        return [self.video_ids[j] for j in columns]


def split_scores(model: Any, collection: Any, split: str, cfg: Any = None, video_ids: Optional[Sequence[str]] = None,
                 relevant: Any = None, progress: bool = False) -> SplitScores:
    """Evaluate ``model`` on ``split`` (or on ``video_ids`` and their captions) keeping the score matrices."""

    videos = list(video_ids) if video_ids is not None else collection.videos(split)
    chosen = set(videos)
    caps = [c for c, _ in collection.captions(split) if collection.video_of(c) in chosen]
    result = evaluate(model, collection, split, cfg, video_ids=videos, cap_ids=caps, keep_scores=True,
                      relevant=relevant, progress=progress)
    column = {v: j for j, v in enumerate(result.video_ids)}
    max_len = cfg.model.max_desc_len if cfg is not None else None
    lengths = np.array([min(collection.n_tokens(c), max_len or 10**9) for c in result.cap_ids], dtype=np.float64)
    return SplitScores(list(result.cap_ids), list(result.video_ids), result.scores["fused"].astype(np.float64),
                       result.scores["clip"].astype(np.float64), np.asarray(result.ranks["fused"]),
                       np.array([column[collection.video_of(c)] for c in result.cap_ids]), lengths)


def two_stage_scores(index: Any, collection: Any, split: str, rerank: int, cfg: Any = None,
                     query_chunk: int = 1024) -> SplitScores:
    """``index``'s two-stage scores of ``split``: per query the clip-scale top ``rerank`` videos with their
    clip and fused scores, and the fused rank of the query's video (outside the top K: its first-stage rank)."""
    from torch.utils.data import DataLoader

    caps = [c for c, _ in collection.captions(split)]
    parts: dict[str, list[Any]] = {"fused": [], "clip": [], "candidates": [], "ranks": []}
    loader = DataLoader(QueryDataset(collection, caps), batch_size=query_chunk, shuffle=False,
                        collate_fn=collate_queries)
    with torch.no_grad():
        for batch in loader:
            stages = index.two_stage(index.encode_queries(batch["query_feats"], batch["query_mask"]), rerank)
            relevant = relevant_indices(batch["cap_ids"], batch["video_ids"], index.video_ids)
            parts["ranks"].append(two_stage_ranks(stages, relevant)[0]["fused"].numpy())
            for key in ("fused", "clip", "candidates"):
                parts[key].append(stages[key].double().numpy() if key != "candidates" else stages[key].numpy())
    fused, clip, candidates = (np.concatenate(parts[k]) for k in ("fused", "clip", "candidates"))
    own = {v: i for i, v in enumerate(index.video_ids)}
    hit = candidates == np.array([own[collection.video_of(c)] for c in caps])[:, None]
    targets = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    max_len = cfg.model.max_desc_len if cfg is not None else 10**9
    lengths = np.array([min(collection.n_tokens(c), max_len) for c in caps], dtype=np.float64)
    return SplitScores(caps, list(index.video_ids), fused, clip, np.concatenate(parts["ranks"]), targets, lengths,
                       candidates)


def restrict_to_first_stage(scores: SplitScores, k: int) -> SplitScores:
    """Exhaustive scores cut to each query's clip-scale top ``k`` (as a two-stage search keeps them), without
    the queries whose own video falls outside: what the softmax temperature of a two-stage run is fitted on."""
    columns = um.top_k_columns(scores.clip, min(k, scores.clip.shape[1]))
    hit = columns == scores.targets[:, None]
    keep = hit.any(axis=1)
    if not keep.any():
        raise DataError(f"no query keeps its own video among the first-stage top {k}: no temperature can be fitted")
    def pick(matrix: np.ndarray) -> np.ndarray:
        return np.take_along_axis(matrix, columns, axis=1)[keep]

    return SplitScores([c for c, kept in zip(scores.cap_ids, keep) if kept], scores.video_ids, pick(scores.fused),
                       pick(scores.clip), scores.ranks[keep], hit[keep].argmax(axis=1), scores.lengths[keep],
                       columns[keep])


def collect_two_stage(model: Any, collection: Any, index: Any, split: str, rerank: int, cfg: Any = None, *,
                      val_split: Optional[str] = None, evidential_k: int = DEFAULT_EVIDENTIAL_K,
                      tau: float = um.DEFAULT_TAU, progress: bool = False) -> "UncertaintyInputs":
    """:func:`collect` on the reranked top ``rerank`` of a two-stage index (free baselines, sigma, evidential
    u; the softmax temperature fitted on ``val_split``'s first-stage top ``rerank``, exhaustively scored)."""
    scores = two_stage_scores(index, collection, split, rerank, cfg)
    val = None
    if val_split:
        val = restrict_to_first_stage(split_scores(model, collection, val_split, cfg, progress=progress), rerank)
    return collect(model, collection, split, cfg, val_scores=val, scores=scores, evidential_k=evidential_k, tau=tau,
                   progress=progress)


def free_baselines(scores: SplitScores, temperature: float = DEFAULT_TEMPERATURE) -> dict[str, np.ndarray]:
    """The four sigma-free scalars of every query (larger = less trustworthy)."""
    return {"neg_margin": -top_margin(scores.fused), "entropy": softmax_entropy(scores.fused, temperature),
            "neg_top1": -scores.fused.max(axis=1), "length": scores.lengths.astype(np.float64)}


def evidential_u(scores: SplitScores, k: int = DEFAULT_EVIDENTIAL_K, tau: float = um.DEFAULT_TAU) -> um.Dirichlet:
    """Post-hoc Dirichlet over the top ``k`` clip-scale candidates, evidence from the fused scores."""
    return um.dirichlet_from_scores(scores.fused, min(k, scores.fused.shape[1]), tau, first_stage=scores.clip)


def top1_columns(fused: np.ndarray) -> np.ndarray:
    """Each row's best column, ties by column index (the ranking's rule)."""
    return um.top_k_columns(fused, 1)[:, 0]


# ----------------------------------------------------------------------------- RAL sigma


def sigma_methods(model: Any, collection: Any, split: str, scores: SplitScores,
                  batch_size: int = 32, progress: bool = False) -> dict[str, np.ndarray]:
    """``sigma`` and ``proxy_spread`` of every query of ``scores`` (the model needs MSRA heads)."""

    if not getattr(getattr(model, "cfg", None), "msra", True):
        raise RalbookError("the model was trained without MSRA (model.msra=false): it has no sigma")
    dist = collect_distributions(model, collection, scores.video_ids, split, batch_size=batch_size, progress=progress)
    row = {c: i for i, c in enumerate(dist.cap_ids)}
    missing = [c for c in scores.cap_ids if c not in row]
    if missing:
        raise DataError(f"{len(missing)} scored captions of split {split!r} have no sigma, e.g. {shorten(missing[0])}")
    at = np.array([row[c] for c in scores.cap_ids])
    log_sigma = dist.query_log_sigma.double().numpy()[at]
    video_row = {v: i for i, v in enumerate(dist.video_ids)}
    top_video = [video_row[v] for v in scores.top1_videos()]
    mu_v = dist.video_mu.double().numpy()[top_video]
    spread = np.sqrt((np.exp(2 * log_sigma) * mu_v**2).sum(axis=1))
    return {"sigma": mean_log_sigma(log_sigma), "proxy_spread": spread}


# ----------------------------------------------------------------------------- MC dropout


@contextlib.contextmanager
def dropout_only(model: torch.nn.Module) -> Iterator[int]:
    """Evaluation mode except the dropout layers (ralbook's and torch's), restored afterwards; yields their count."""

    was_training = model.training
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, (Dropout, torch.nn.Dropout))]
    for m in layers:
        m.train()
    try:
        yield len(layers)
    finally:
        model.train(was_training)


class ShiftedMoments:
    """Running mean and variance of (n,) values across passes, shifted by the first pass (exact 0 when equal)."""

    def __init__(self) -> None:
        self.first: Optional[np.ndarray] = None
        self.sum = self.sum_sq = 0.0
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        if self.first is None:
            self.first = values.copy()
        d = values - self.first
        self.sum, self.sum_sq, self.count = self.sum + d, self.sum_sq + d * d, self.count + 1

    def variance(self) -> np.ndarray:
        """Population variance over the passes added so far."""
        if self.count == 0:
            raise RalbookError("no pass was added")
        mean = self.sum / self.count
        return np.maximum(self.sum_sq / self.count - mean * mean, 0.0) * np.ones_like(self.first)


def stochastic_fused_scores(model: Any, collection: Any, scores: SplitScores, query_chunk: int = 100,
                            video_chunk: int = 50, video_batch: int = 64) -> torch.Tensor:
    """One pass of fused scores (Nq, Nv) in the order of ``scores``, with the model as it is set (no mode change)."""
    from torch.utils.data import DataLoader


    device = next(model.parameters()).device
    with torch.no_grad():
        videos = SortedVideos(encode_video_set(model, collection, scores.video_ids, device, video_batch,
                                               progress=False))
        rows = []
        for batch in DataLoader(QueryDataset(collection, scores.cap_ids), batch_size=query_chunk, shuffle=False,
                                collate_fn=collate_queries):
            queries = model.encode_queries(batch["query_feats"].to(device), batch["query_mask"].to(device))
            rows.append(score_rows(model, queries, videos, video_chunk)["fused"].cpu())
    return torch.cat(rows).double()


def mc_dropout(model: Any, collection: Any, scores: SplitScores, passes: int, seed: int = 0,
               cfg: Any = None) -> dict[str, np.ndarray]:
    """``mc_score_var`` and ``mc_rank_var`` of the deterministic top-1 video over ``passes`` dropout passes.

    Each pass re-encodes videos and queries with fresh dropout masks (torch's RNG forked and seeded
    with ``seed + pass``, so the caller's RNG is untouched and the result is reproducible).
    """

    if passes < 2:
        raise RalbookError(f"MC dropout needs at least 2 passes, got {passes}")
    chunks = {"query_chunk": cfg.train.eval_query_chunk, "video_chunk": cfg.train.eval_video_chunk} if cfg else {}
    top = torch.as_tensor(top1_columns(scores.fused)).unsqueeze(1)
    score_m, rank_m = ShiftedMoments(), ShiftedMoments()
    device = next(model.parameters()).device
    with dropout_only(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for t in range(passes):
            torch.manual_seed(seed + t)
            fused = stochastic_fused_scores(model, collection, scores, **chunks)
            score_m.add(fused.gather(1, top).squeeze(1).numpy())
            rank_m.add(ranks_from_scores(fused, top).numpy())
    return {"mc_score_var": score_m.variance(), "mc_rank_var": rank_m.variance()}


# ----------------------------------------------------------------------------- deep ensembles


def ensemble_disagreement(runs: Sequence[SplitScores]) -> dict[str, np.ndarray]:
    """``ensemble_score_var`` and ``ensemble_disagreement`` of several runs on the same queries and videos."""
    if len(runs) < 2:
        raise RalbookError(f"an ensemble needs at least 2 runs, got {len(runs)}")
    first = runs[0]
    for i, run in enumerate(runs[1:], 2):
        if run.cap_ids != first.cap_ids or run.video_ids != first.video_ids:
            raise DataError(f"ensemble run {i} scored other queries or videos than run 1 ({len(run.cap_ids)} x "
                            f"{len(run.video_ids)} vs {len(first.cap_ids)} x {len(first.video_ids)})")
    stacked = np.stack([r.fused for r in runs])             # (R, Nq, Nv)
    chosen = top1_columns(stacked.mean(axis=0))
    moments = ShiftedMoments()
    for r in runs:
        moments.add(r.fused[np.arange(len(chosen)), chosen])
    tops = np.stack([top1_columns(r.fused) for r in runs], axis=1)   # (Nq, R)
    agreement = np.array([np.bincount(row).max() for row in tops]) / len(runs)
    return {"ensemble_score_var": moments.variance(), "ensemble_disagreement": 1.0 - agreement}


# ----------------------------------------------------------------------------- collecting every method


@dataclass
class UncertaintyInputs:
    """Everything the benchmark table needs, per query of one split."""

    cap_ids: list[str]
    ranks: np.ndarray                                   # (n,) 1-based
    uncertainty: dict[str, np.ndarray]                  # method -> (n,), larger = less trustworthy
    probability: dict[str, np.ndarray] = field(default_factory=dict)   # method -> (n,) P(top-1 is right)
    temperature: Optional[float] = None                 # fitted on validation (softmax probability)


def collect(model: Any, collection: Any, split: str, cfg: Any = None, *, val_scores: Optional[SplitScores] = None,
            scores: Optional[SplitScores] = None, ensemble: Sequence[SplitScores] = (), mc_passes: int = 0,
            evidential_k: int = DEFAULT_EVIDENTIAL_K, tau: float = um.DEFAULT_TAU, seed: int = 0,
            progress: bool = False) -> UncertaintyInputs:
    """Every method's per-query uncertainty on ``split`` for one model (plus ``ensemble`` runs' scores).

    ``val_scores`` (the same model on the validation split) fits the softmax temperature; without it
    there is no ``softmax`` probability. Sigma methods need a model with MSRA heads; MC dropout runs
    when ``mc_passes`` >= 2; the ensemble holds the model's own scores and those of ``ensemble``.
    """
    scores = scores if scores is not None else split_scores(model, collection, split, cfg, progress=progress)
    methods = free_baselines(scores)
    if getattr(getattr(model, "cfg", None), "msra", False):
        methods.update(sigma_methods(model, collection, split, scores, progress=progress))
    if mc_passes:
        methods.update(mc_dropout(model, collection, scores, mc_passes, seed, cfg))
    if ensemble:
        methods.update(ensemble_disagreement([scores, *ensemble]))
    dirichlet = evidential_u(scores, evidential_k, tau)
    methods["evidential_u"] = dirichlet.uncertainty
    # the Dirichlet's probability of the fused top-1 video (0 when the first stage did not keep it)
    top = top1_columns(scores.fused)
    found = dirichlet.candidates == top[:, None]
    probability = {"evidential": np.where(found.any(axis=1), (dirichlet.probability * found).sum(axis=1), 0.0)}
    temperature = None
    if val_scores is not None:
        temperature = um.fit_temperature(val_scores.fused, val_scores.targets)
        probability["softmax"] = um.top1_probability(scores.fused, temperature)
    return UncertaintyInputs(list(scores.cap_ids), np.asarray(scores.ranks), methods, probability, temperature)


# ----------------------------------------------------------------------------- the table


def _interval(statistic: Any, n: int, n_boot: int, seed: int, strata: Optional[np.ndarray] = None) -> list[float]:
    """[estimate, low, high]: the statistic on all queries and its bootstrap percentile interval."""
    low, high = um.bootstrap_interval(statistic, n, n_boot, seed, LEVEL, strata)
    return [float(statistic(np.arange(n))), low, high]


# Metric names as they read in sentences and in the printed table.
METRIC_WORDS = {"auroc": "AUROC", "aurc": "AURC", "e_aurc": "E-AURC", "ece": "ECE"}


def question_words(question: str) -> str:
    """``failure@1`` -> the phrase sentences use for the question."""
    if question.startswith("failure@"):
        k = question.split("@", 1)[1]
        return "failure (right video not at rank 1)" if k == "1" else f"failure (right video not in the top {k})"
    return {"ambiguity": "ambiguity (ambiguous vs specific queries)"}.get(question, question)


def paired_metric(metric: Any, values_a: np.ndarray, values_b: np.ndarray, target: np.ndarray, *, name_a: str,
                  name_b: str, metric_name: str, higher_is_better: bool, n_boot: int, seed: int) -> stats.Comparison:
    """``metric(values_a, target) - metric(values_b, target)`` through :func:`ralbook.stats.paired_bootstrap`.

    Why this shape: AURC and ECE are not means of per-query numbers (they depend on the order or the bins
    of all queries), so the bootstrap resamples query *indices*: method A's queries are items 0..n-1 and
    B's the same queries as items n..2n-1 of one stacked table; ``paired_bootstrap`` draws the same
    positions for both, so every resample pairs the two methods on the same queries.
    """
    target = np.asarray(target, dtype=np.float64)
    n = target.size
    table = np.concatenate([np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)])
    truth = np.concatenate([target, target])

    def statistic(items: np.ndarray, axis: int = -1) -> Any:
        rows = np.asarray(items).astype(int)
        if rows.ndim == 1:
            return metric(table[rows], truth[rows])
        flat = rows.reshape(-1, rows.shape[-1])
        return np.array([metric(table[r], truth[r]) for r in flat]).reshape(rows.shape[:-1])

    return stats.paired_bootstrap(np.arange(n), np.arange(n) + n, statistic, name_a=name_a, name_b=name_b,
                                  metric=metric_name, unit="queries", higher_is_better=higher_is_better,
                                  n_boot=n_boot, seed=seed, level=LEVEL)


def _separation(u: dict[str, np.ndarray], positive: np.ndarray, n_boot: int, seed: int,
                with_aurc: bool) -> dict[str, Any]:
    """AUROC (and AURC, E-AURC when ``positive`` is a failure) of every method, and the paired
    differences against the free baseline with the best point estimate."""
    n = positive.size
    loss = positive.astype(np.float64)
    out: dict[str, Any] = {"n_positive": int(positive.sum()), "n": n, "methods": {}}
    if with_aurc:
        out["oracle_aurc"], out["random_aurc"] = um.oracle_aurc(loss), um.random_aurc(loss)
    for name, values in u.items():
        entry = {"auroc": _interval(lambda i, v=values: um.failure_auroc(v[i], positive[i]), n, n_boot, seed,
                                    strata=positive)}
        if with_aurc:
            entry["aurc"] = _interval(lambda i, v=values: um.aurc(v[i], loss[i]), n, n_boot, seed)
            entry["e_aurc"] = _interval(lambda i, v=values: um.excess_aurc(v[i], loss[i]), n, n_boot, seed)
        out["methods"][name] = entry
    free = [b for b in FREE_BASELINES if b in u]
    if not free:
        return out
    key = "e_aurc" if with_aurc else "auroc"
    # strongest free baseline: lowest excess AURC, or the AUROC furthest from 0.5 (it may separate the other way)
    best = (min(free, key=lambda b: out["methods"][b][key][0]) if with_aurc
            else max(free, key=lambda b: abs(out["methods"][b][key][0] - 0.5)))
    out["baseline"] = best
    versus = {}
    for name, values in u.items():
        if name == best:
            continue
        # failure: every scalar states its direction (larger = less trustworthy), so none is flipped;
        # ambiguity: only the baseline may be read in its informative direction (the method's is the claim)
        row = {"auroc": stats.compare_aucs(values, u[best], positive.astype(np.float64), name_a=name, name_b=best,
                                           informative_direction=False if with_aurc else "b", unit="queries",
                                           n_boot=n_boot, seed=seed, level=LEVEL).to_dict()}
        if with_aurc:
            # E-AURC(a) - E-AURC(b) = AURC(a) - AURC(b) on the same queries (the oracle cancels): one comparison
            row["aurc"] = paired_metric(um.aurc, values, u[best], loss, name_a=name, name_b=best, metric_name="AURC",
                                        higher_is_better=False, n_boot=n_boot, seed=seed).to_dict()
        row["verdict"] = row["aurc" if with_aurc else "auroc"]["verdict"]
        versus[name] = row
    out["versus"] = versus
    return out


def benchmark(inputs: UncertaintyInputs, ambiguous: Optional[dict[str, int]] = None, n_boot: int = DEFAULT_BOOTSTRAP,
              seed: int = 0, n_bins: int = 10, binning: str = "width") -> dict[str, Any]:
    """The table: for each question, each method's metric with its 95% bootstrap interval over queries.

    Questions: ``failure@1``, ``failure@10`` (AUROC, AURC, E-AURC; versus the free baseline with the
    lowest E-AURC), ``ambiguity`` when ``ambiguous`` (caption id -> 0/1) labels some queries (AUROC;
    versus the baseline whose AUROC is furthest from 0.5), and ``calibration`` (ECE and reliability table
    of each probability against hits at rank 1; versus the fitted softmax). Every paired difference is a
    :class:`ralbook.stats.Comparison` (``to_dict``), so :func:`sentences` words it with ``stats.describe``;
    the baseline is chosen on the same data, which favours the baseline.
    """
    n = len(inputs.cap_ids)
    out: dict[str, Any] = {"n_queries": n, "level": LEVEL, "n_boot": n_boot, "seed": seed}
    for k in FAILURE_AT:
        failed = um.failures(inputs.ranks, k)
        if failed.all() or not failed.any():
            out[f"failure@{k}"] = {"skipped": f"{int(failed.sum())} of {n} queries fail at {k}: nothing to predict"}
            continue
        out[f"failure@{k}"] = _separation(inputs.uncertainty, failed, n_boot, seed, with_aurc=True)
    if ambiguous is not None:
        keep = np.array([c in ambiguous for c in inputs.cap_ids])
        labels = np.array([int(ambiguous[c]) for c in np.asarray(inputs.cap_ids)[keep]], dtype=bool)
        if labels.size and labels.any() and not labels.all():
            subset = {name: v[keep] for name, v in inputs.uncertainty.items()}
            out["ambiguity"] = _separation(subset, labels, n_boot, seed, with_aurc=False)
        else:
            out["ambiguity"] = {"skipped": f"{int(labels.sum())} ambiguous of {labels.size} labelled queries"}
    hit = (np.asarray(inputs.ranks) == 1).astype(np.float64)
    calibration = {}
    for name, p in inputs.probability.items():
        table = um.calibration_table(p, hit, n_bins, binning)
        calibration[name] = {
            "ece": _interval(lambda i, p=p: um.expected_calibration_error(p[i], hit[i], n_bins, binning), n, n_boot,
                             seed),
            "table": {f: getattr(table, f).tolist() for f in ("lower", "upper", "count", "confidence", "accuracy")}}
    out["calibration"] = calibration
    # the free probability (softmax with the fitted temperature) is the baseline of every other probability
    if CALIBRATION_BASELINE in inputs.probability:
        base = inputs.probability[CALIBRATION_BASELINE]
        out["calibration_baseline"] = CALIBRATION_BASELINE
        out["calibration_versus"] = {
            name: paired_metric(lambda q, y: um.expected_calibration_error(q, y, n_bins, binning), p,
                                base, hit, name_a=name, name_b=CALIBRATION_BASELINE, metric_name="ECE",
                                higher_is_better=False, n_boot=n_boot, seed=seed).to_dict()
            for name, p in inputs.probability.items() if name != CALIBRATION_BASELINE}
    if inputs.temperature is not None:
        out["temperature"] = inputs.temperature
    return out


def curves(inputs: UncertaintyInputs, k: int = 1, coverages: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """Risk-coverage curves of every method for failure at ``k``, with the oracle and random orderings."""
    grid = np.asarray(coverages if coverages is not None else np.linspace(0.05, 1.0, 20))
    loss = um.failures(inputs.ranks, k).astype(np.float64)
    out = {"coverage": grid.tolist(), "oracle": um.risk_coverage(loss, loss, grid).risk.tolist(),
           "random": [float(loss.mean())] * grid.size}
    out["methods"] = {name: um.risk_coverage(v, loss, grid).risk.tolist() for name, v in inputs.uncertainty.items()}
    return out


# ----------------------------------------------------------------------------- words


def _cell(entry: Optional[Sequence[float]], digits: int = 3) -> str:
    if entry is None:
        return "-"
    est, low, high = entry
    return f"{est:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (("failure@1", "auroc"), ("failure@1", "e_aurc"), ("failure@10", "auroc"),
                                               ("failure@10", "e_aurc"), ("ambiguity", "auroc"))


def format_table(table: dict[str, Any], title: str = "") -> str:
    """The printed table: one row per method, one column per question and metric, each ``value [95% CI]``.

    AUROC: 0.5 = no prediction, higher is better; E-AURC: 0 = the oracle ordering, lower is better.
    """
    columns = [(q, m) for q, m in TABLE_COLUMNS if "methods" in table.get(q, {})]
    names = list(dict.fromkeys(n for q, _ in columns for n in table[q]["methods"]))
    width = max([len(n) for n in names] + [6]) + 2
    head = "".join(f"{q + ' ' + METRIC_WORDS[m]:>26}" for q, m in columns)
    lines = [title] if title else []
    lines.append(f"{int(100 * table['level'])}% intervals over {table['n_queries']} queries, {table['n_boot']} "
                 f"bootstrap resamples (seed {table.get('seed', 0)}); AUROC 0.5 = no prediction, E-AURC 0 = oracle")
    lines.append(f"{'method':<{width}}{head}")
    for name in names:
        cells = "".join(f"{_cell(table[q]['methods'].get(name, {}).get(m)):>26}" for q, m in columns)
        mark = " (free)" if name in FREE_BASELINES else ""
        lines.append(f"{name + mark:<{width}}{cells}" if len(name + mark) < width else f"{name:<{width}}{cells}")
    for q in ("failure@1", "failure@10", "ambiguity"):
        if "skipped" in table.get(q, {}):
            lines.append(f"{q}: skipped ({table[q]['skipped']})")
    for q in ("failure@1", "failure@10"):
        if "oracle_aurc" in table.get(q, {}):
            lines.append(f"{q}: oracle AURC {table[q]['oracle_aurc']:.3f}, random AURC {table[q]['random_aurc']:.3f}")
    for name, c in table.get("calibration", {}).items():
        lines.append(f"calibration {name}: ECE {_cell(c['ece'])}")
    if table.get("temperature") is not None:
        lines.append(f"softmax temperature fitted on the validation split: {table['temperature']:.4g}")
    return "\n".join(lines)


def sentences(table: dict[str, Any]) -> dict[str, list[str]]:
    """Every verdict of the table as a sentence from :func:`ralbook.stats.describe`, per question.

    Failure: each method against the strongest free baseline on AURC (lower is better; the difference equals
    the E-AURC difference); ambiguity: on AUROC; calibration: each probability against the softmax on ECE.
    Plus, per method, whether its AUROC is above chance (:func:`ralbook.stats.describe_vs_chance`).
    """
    out: dict[str, list[str]] = {}
    for q in ("failure@1", "failure@10", "ambiguity"):
        block = table.get(q, {})
        if "methods" not in block:
            continue
        words = question_words(q)
        lines = [stats.describe_vs_chance(e["auroc"][0], tuple(e["auroc"][1:]), chance=0.5, level=table["level"],
                                          what=f"The AUROC of {name} for {words}")
                 for name, e in block["methods"].items()]
        metric = "aurc" if q != "ambiguity" else "auroc"
        what = (f"AURC of {words} (lower is better)" if metric == "aurc" else f"AUROC for {words}")
        lines += [stats.describe(stats.Comparison.from_dict(row[metric]), what=what)
                  for row in block.get("versus", {}).values()]
        out[q] = lines
    if table.get("calibration_versus"):
        out["calibration"] = [stats.describe(stats.Comparison.from_dict(c), what="expected calibration error")
                              for c in table["calibration_versus"].values()]
    return out


def what_this_shows(table: dict[str, Any], question: str = "failure@1") -> str:
    """The generated conclusion: each non-free method against the strongest free baseline, worded by
    :func:`ralbook.stats.describe` (better / worse / cannot be told apart, with the paired interval)."""
    block = table.get(question, {})
    if "versus" not in block:
        reason = block.get("skipped", "no free baseline to compare with")
        return f"**What this shows**: {question_words(question)} cannot be assessed here ({reason})."
    base = block["baseline"]
    rows = {n: r for n, r in block["versus"].items() if n not in FREE_BASELINES}
    verdicts = [r["verdict"] for r in rows.values()]
    parts = [f"**What this shows**: on {table['n_queries']} queries, the strongest free baseline for "
             f"{question_words(question)} is `{base}` (E-AURC {_cell(block['methods'][base]['e_aurc'])}, chosen on "
             f"the same queries, which favours it)."]
    if rows:
        parts.append(f"Against it, {verdicts.count('better')} of {len(rows)} model-based methods are better, "
                     f"{verdicts.count('worse')} worse and {verdicts.count('undecided')} cannot be told apart at "
                     "this size:")
        parts += [f"- {stats.describe(stats.Comparison.from_dict(r['aurc']), what='AURC (lower is better)')}"
                  for r in rows.values()]
    else:
        parts.append("No model-based method was measured (only free baselines).")
    for c in table.get("calibration_versus", {}).values():
        parts.append(f"Calibration: {stats.describe(stats.Comparison.from_dict(c), what='expected calibration error')}")
    return "\n".join(parts)


__all__ = ["FREE_BASELINES", "SplitScores", "UncertaintyInputs", "ShiftedMoments", "benchmark", "collect", "curves",
           "dropout_only", "ensemble_disagreement", "evidential_u", "free_baselines", "mc_dropout", "sigma_methods",
           "split_scores", "two_stage_scores", "restrict_to_first_stage", "collect_two_stage", "stochastic_fused_scores", "top1_columns", "format_table", "sentences",
           "what_this_shows", "paired_metric", "question_words"]
