"""Metrics of the uncertainty benchmark (issue 23): pure numpy on per-query arrays, no model.

Conventions, shared by every function here:

* ``uncertainty`` (n,): larger = less trustworthy. A method whose natural score means the opposite
  (a margin, a top-1 score) is negated before it comes here.
* ``loss`` (n,): the per-query loss the uncertainty should predict; for retrieval 1 - hit, i.e.
  1 when the right video is not at rank 1 (or not in the top 10).
* Selective retrieval keeps the most confident queries: the *risk* at coverage k/n is the mean loss
  of the k queries of lowest uncertainty. Queries of equal uncertainty are kept in an order drawn at
  random, and the risk is its expectation (each tie group contributes its mean loss per kept query),
  so results never depend on the input order.
* AURC is the mean risk over the n coverages 1/n .. n/n; the *oracle* orders by the loss itself (the
  smallest AURC any ordering reaches), a random ordering has AURC = mean loss, and E-AURC = AURC - oracle.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from ralbook.errors import DataError
from ralbook.studies.analysis import auc

BINNINGS: tuple[str, ...] = ("width", "mass")
# Largest |log evidence|, the same cap as ralbook.losses.EVIDENCE_LOG_CAP (training and post hoc agree).
EVIDENCE_LOG_CAP = 20.0
DEFAULT_TAU = 0.05          # evidence temperature; Holmes' choice for cosine scores
TEMPERATURE_BOUNDS = (1e-4, 1e2)


def _vector(values: object, name: str) -> np.ndarray:
    """A finite 1-D float array; DataError naming ``name`` otherwise."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{name}: expected a non-empty 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name}: {int((~np.isfinite(arr)).sum())} of {arr.size} values are NaN or infinite")
    return arr


def _pair(uncertainty: object, loss: object) -> tuple[np.ndarray, np.ndarray]:
    u, l = _vector(uncertainty, "uncertainty"), _vector(loss, "loss")
    if u.shape != l.shape:
        raise DataError(f"uncertainty has {u.size} queries but loss has {l.size}")
    return u, l


# ----------------------------------------------------------------------------- risk and coverage


def cumulative_loss(uncertainty: object, loss: object) -> np.ndarray:
    """(n + 1,) expected total loss of the k most confident queries, k = 0..n (ties averaged)."""
    u, l = _pair(uncertainty, loss)
    order = np.argsort(u, kind="stable")
    _, group = np.unique(u[order], return_inverse=True)
    group_mean = np.bincount(group, weights=l[order]) / np.bincount(group)
    return np.concatenate([[0.0], np.cumsum(group_mean[group])])


@dataclass
class RiskCoverage:
    """A risk-coverage curve: ``risk[i]`` is the mean loss of the kept ``coverage[i]`` fraction."""

    coverage: np.ndarray
    risk: np.ndarray


def risk_coverage(uncertainty: object, loss: object, coverages: Optional[Sequence[float]] = None) -> RiskCoverage:
    """The curve at the n coverages k/n, or at given ``coverages`` in (0, 1].

    Between k and k + 1 kept queries the total loss is interpolated linearly (keeping a fraction of
    the next query), so a common grid compares methods on collections of any size.
    """
    total = cumulative_loss(uncertainty, loss)
    n = total.size - 1
    if coverages is None:
        k = np.arange(1, n + 1, dtype=np.float64)
        return RiskCoverage(k / n, total[1:] / k)
    cov = np.asarray(coverages, dtype=np.float64)
    if cov.ndim != 1 or cov.size == 0 or not ((cov > 0) & (cov <= 1)).all():
        raise DataError(f"coverages must be a non-empty list of values in (0, 1], got {cov.tolist()}")
    kept = cov * n
    return RiskCoverage(cov, np.interp(kept, np.arange(n + 1), total) / kept)


def aurc(uncertainty: object, loss: object) -> float:
    """Area under the risk-coverage curve: the mean risk over the coverages 1/n .. n/n."""
    curve = risk_coverage(uncertainty, loss)
    return float(curve.risk.mean())


def oracle_aurc(loss: object) -> float:
    """The smallest AURC of any ordering: queries kept in order of increasing loss."""
    l = _vector(loss, "loss")
    return aurc(l, l)


def random_aurc(loss: object) -> float:
    """AURC of an uninformative ordering (all queries tied): every coverage has the mean loss."""
    return float(_vector(loss, "loss").mean())


def excess_aurc(uncertainty: object, loss: object) -> float:
    """E-AURC: AURC minus the oracle's, 0 for a perfect ordering (comparable across error rates)."""
    return aurc(uncertainty, loss) - oracle_aurc(loss)


# ----------------------------------------------------------------------------- failure prediction


def failures(ranks: object, k: int = 1) -> np.ndarray:
    """Per-query failure at k: the right video is not among the first k (1-based ranks)."""
    r = _vector(ranks, "ranks")
    if k < 1 or (r < 1).any():
        raise DataError(f"failures: need k >= 1 and 1-based ranks, got k={k} and a minimum rank {r.min()}")
    return r > k


def failure_auroc(uncertainty: object, failed: object) -> float:
    """P(a failed query is more uncertain than a successful one), ties half: 0.5 = no prediction."""
    u = _vector(uncertainty, "uncertainty")
    f = np.asarray(failed, dtype=bool)
    if f.shape != u.shape:
        raise DataError(f"uncertainty has {u.size} queries but failed has {f.size}")
    if f.all() or not f.any():
        raise DataError(f"failure AUROC needs both failed and successful queries; got {int(f.sum())} failed of "
                        f"{f.size}")
    return auc(u[f], u[~f])


# ----------------------------------------------------------------------------- calibration


@dataclass
class CalibrationTable:
    """Rows of a reliability diagram, one per non-empty bin."""

    lower: np.ndarray       # bin edges (width) or the smallest/largest confidence in the bin (mass)
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray  # mean predicted probability in the bin
    accuracy: np.ndarray    # observed hit rate in the bin

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (share of queries) x |accuracy - confidence|."""
        return float((self.count * np.abs(self.accuracy - self.confidence)).sum() / self.count.sum())


def calibration_table(confidence: object, correct: object, n_bins: int = 10,
                      binning: str = "width") -> CalibrationTable:
    """Reliability table of predicted probabilities against 0/1 outcomes.

    ``width``: n_bins equal intervals of [0, 1] (1.0 falls in the last); ``mass``: the queries sorted
    by confidence (stable) cut into n_bins groups of (nearly) equal size.
    """
    c = _vector(confidence, "confidence")
    y = _vector(correct, "correct")
    if c.shape != y.shape:
        raise DataError(f"confidence has {c.size} queries but correct has {y.size}")
    if (c < 0).any() or (c > 1).any():
        raise DataError(f"confidence must lie in [0, 1], got values in [{c.min():.3g}, {c.max():.3g}]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError("correct must hold 0/1 outcomes")
    if binning not in BINNINGS or n_bins < 1:
        raise DataError(f"need binning in {BINNINGS} and n_bins >= 1, got {binning!r} and {n_bins}")
    if binning == "width":
        index = np.minimum((c * n_bins).astype(int), n_bins - 1)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        groups = [np.flatnonzero(index == b) for b in range(n_bins)]
        bounds = [(edges[b], edges[b + 1]) for b in range(n_bins)]
    else:
        groups = np.array_split(np.argsort(c, kind="stable"), min(n_bins, c.size))
        bounds = [(c[g].min(), c[g].max()) for g in groups]
    rows = [(lo, hi, g.size, c[g].mean(), y[g].mean()) for g, (lo, hi) in zip(groups, bounds) if g.size]
    lo, hi, n, conf, acc = (np.asarray(col, dtype=np.float64) for col in zip(*rows))
    return CalibrationTable(lo, hi, n.astype(int), conf, acc)


def expected_calibration_error(confidence: object, correct: object, n_bins: int = 10, binning: str = "width") -> float:
    """ECE of :func:`calibration_table`."""
    return calibration_table(confidence, correct, n_bins, binning).ece


def log_softmax(scores: object, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log softmax of scores / temperature, (n, m)."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def top1_probability(scores: object, temperature: float) -> np.ndarray:
    """Probability the softmax over the gallery gives its best video: the query's match confidence."""
    return np.exp(log_softmax(scores, temperature).max(axis=1))


def temperature_nll(scores: object, targets: object, temperature: float) -> float:
    """Mean negative log-likelihood of the true column under softmax(scores / temperature)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=int)
    return float(-log_softmax(s, temperature)[np.arange(s.shape[0]), t].mean())


def fit_temperature(scores: object, targets: object,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature minimising :func:`temperature_nll` (bounded 1-D search over log temperature).

    Fit it on validation queries and apply it to test queries. ``targets``: the true column of each
    row. A fit at a bound (the NLL still falling) warns: the scores separate the validation queries
    perfectly or not at all.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=int)
    if s.ndim != 2 or t.shape != (s.shape[0],) or s.shape[0] == 0:
        raise DataError(f"fit_temperature: need scores (n, m) and n targets, got {s.shape} and {t.shape}")
    if (t < 0).any() or (t >= s.shape[1]).any():
        raise DataError(f"fit_temperature: targets must be column indices in [0, {s.shape[1]})")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    found = minimize_scalar(lambda x: temperature_nll(s, t, math.exp(x)), bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-6})
    if min(found.x - lo, hi - found.x) < 1e-3:
        warnings.warn(f"fit_temperature: the fit reached the bound {math.exp(found.x):.3g} of {bounds}")
    return float(math.exp(found.x))


# ----------------------------------------------------------------------------- evidential (Dirichlet)


def evidence(scores: object, tau: float = DEFAULT_TAU, cap: float = EVIDENCE_LOG_CAP) -> np.ndarray:
    """exp(clamp(score / tau, -cap, cap)): the numpy twin of ``ralbook.losses.evidence``."""
    if not tau > 0:
        raise DataError(f"evidence temperature tau must be > 0, got {tau}")
    return np.exp(np.clip(np.asarray(scores, dtype=np.float64) / tau, -cap, cap))


@dataclass
class Dirichlet:
    """Per query: a Dirichlet over its K candidate videos."""

    candidates: np.ndarray   # (n, K) column indices, best first-stage score first
    alpha: np.ndarray        # (n, K) evidence + 1
    strength: np.ndarray     # (n,) S = sum alpha
    uncertainty: np.ndarray  # (n,) u = K / S, in (0, 1]
    probability: np.ndarray  # (n, K) expected probability alpha / S


def top_k_columns(scores: object, k: int) -> np.ndarray:
    """(n, k) columns of the k best scores per row, ties by column index (as the ranks break them)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or not 1 <= k <= s.shape[1]:
        raise DataError(f"top_k_columns: need 1 <= k <= {s.shape[1] if s.ndim == 2 else '?'} columns, got k={k}")
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def dirichlet_from_scores(scores: object, k: int, tau: float = DEFAULT_TAU,
                          first_stage: Optional[object] = None) -> Dirichlet:
    """Evidential uncertainty u = K / S over each query's top-K candidates.

    Candidates: the K best columns of ``first_stage`` (default ``scores``), as a two-stage index picks
    them; their evidence comes from ``scores`` (e.g. the fused reranking score). K is fixed, so u is
    comparable across queries and between training and test.
    """
    s = np.asarray(scores, dtype=np.float64)
    stage = s if first_stage is None else np.asarray(first_stage, dtype=np.float64)
    if stage.shape != s.shape:
        raise DataError(f"first_stage scores {stage.shape} and scores {s.shape} differ in shape")
    columns = top_k_columns(stage, k)
    alpha = evidence(np.take_along_axis(s, columns, axis=1), tau) + 1.0
    strength = alpha.sum(axis=1)
    return Dirichlet(columns, alpha, strength, k / strength, alpha / strength[:, None])


# ----------------------------------------------------------------------------- bootstrap over queries


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95, strata: Optional[object] = None) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resamples of the n queries with replacement.

    ``statistic`` receives the resampled query indices, so paired quantities (two methods on the same
    queries) use the same draw. ``strata`` (n,) labels: each stratum is resampled at its own size
    (keeps both classes of an AUROC present). Draws from ``numpy.random.default_rng(seed)``.
    """
    if n_boot < 1 or not 0 < level < 1 or n < 1:
        raise DataError(f"bootstrap: need n_boot >= 1, 0 < level < 1 and n >= 1, got {n_boot}, {level}, {n}")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == g)
                                                     for g in np.unique(np.asarray(strata))]
    values = np.empty(n_boot)
    for b in range(n_boot):
        values[b] = statistic(np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups]))
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


__all__ = ["BINNINGS", "CalibrationTable", "Dirichlet", "RiskCoverage", "aurc", "bootstrap_interval",
           "calibration_table", "cumulative_loss", "dirichlet_from_scores", "evidence", "excess_aurc",
           "expected_calibration_error", "failure_auroc", "failures", "fit_temperature", "log_softmax",
           "oracle_aurc", "random_aurc", "risk_coverage", "temperature_nll", "top1_probability", "top_k_columns"]
