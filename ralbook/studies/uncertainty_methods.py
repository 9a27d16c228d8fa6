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
from ralbook.errors import DataError, RalbookError, shorten
from ralbook.model.layers import Dropout
from ralbook.retrieval.evaluate import SortedVideos, encode_video_set, evaluate, score_rows
from ralbook.retrieval.metrics import ranks_from_scores
from ralbook.studies import uncertainty_metrics as um
from ralbook.studies.analysis import collect_distributions
from ralbook.studies.uncertainty import (DEFAULT_BOOTSTRAP, DEFAULT_TEMPERATURE, mean_log_sigma, softmax_entropy,
                                         top_margin)

FREE_BASELINES: tuple[str, ...] = ("neg_margin", "entropy", "neg_top1", "length")
FAILURE_AT: tuple[int, ...] = (1, 10)
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
    top_video = [video_row[scores.video_ids[j]] for j in top1_columns(scores.fused)]
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


def verdict(difference: Sequence[float], larger_is_better: bool) -> str:
    """``better`` / ``worse`` when the interval of (method - baseline) excludes 0, else ``not distinguishable``."""
    _, low, high = difference
    if low > 0 or high < 0:
        return "better" if (low > 0) == larger_is_better else "worse"
    return "not distinguishable"


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
    pick = min if with_aurc else max  # strongest: lowest excess AURC, or highest AUROC
    best = pick(free, key=lambda b: out["methods"][b][key][0])
    out["baseline"] = best
    versus = {}
    for name, values in u.items():
        if name == best:
            continue
        base = u[best]
        row = {"auroc_diff": _interval(lambda i, v=values: um.failure_auroc(v[i], positive[i])
                                       - um.failure_auroc(base[i], positive[i]), n, n_boot, seed, strata=positive)}
        row["verdict"] = verdict(row["auroc_diff"], larger_is_better=True)
        if with_aurc:
            row["e_aurc_diff"] = _interval(lambda i, v=values: um.excess_aurc(v[i], loss[i])
                                           - um.excess_aurc(base[i], loss[i]), n, n_boot, seed)
            row["verdict"] = verdict(row["e_aurc_diff"], larger_is_better=False)
        versus[name] = row
    out["versus"] = versus
    return out


def benchmark(inputs: UncertaintyInputs, ambiguous: Optional[dict[str, int]] = None, n_boot: int = DEFAULT_BOOTSTRAP,
              seed: int = 0, n_bins: int = 10, binning: str = "width") -> dict[str, Any]:
    """The table: for each question, each method's metric with its 95% bootstrap interval over queries.

    Questions: ``failure@1``, ``failure@10`` (AUROC, AURC, E-AURC; versus the free baseline with the
    lowest E-AURC), ``ambiguity`` when ``ambiguous`` (caption id -> 0/1) labels some queries (AUROC;
    versus the baseline with the highest AUROC), and ``calibration`` (ECE and reliability table of each
    probability against hits at rank 1). Paired differences resample the same queries for both methods;
    the baseline is chosen on the same data, which favours the baseline.
    """
    n = len(inputs.cap_ids)
    out: dict[str, Any] = {"n_queries": n, "level": LEVEL, "n_boot": n_boot}
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


__all__ = ["FREE_BASELINES", "SplitScores", "UncertaintyInputs", "ShiftedMoments", "benchmark", "collect", "curves",
           "dropout_only", "ensemble_disagreement", "evidential_u", "free_baselines", "mc_dropout", "sigma_methods",
           "split_scores", "stochastic_fused_scores", "top1_columns", "verdict"]
