"""The statistics every sentence of the workbook rests on: comparisons with intervals, and their wording.

Why one module: a sentence such as "RAL is better than its backbone" is only as good as the interval
behind it. Every comparison the workbook makes goes through one of the functions here, which return a
:class:`Comparison` (the difference ``a - b``, its interval, how it was computed, and the smallest
difference the design could have detected), and every sentence comes from :func:`describe`, which
words the three possible outcomes differently:

* **better** / **worse**: the interval of the difference excludes 0 (above or below, read through
  ``higher_is_better``);
* **undecided**: the interval includes 0; the sentence then says what sample size would resolve a
  difference of the observed size. A verdict never comes from a point estimate alone.

Designs:

* :func:`paired_bootstrap` - two per-item values of the same items (queries, captions); resamples the
  items, the same indices for both arrays, and takes the percentile interval of the difference.
* :func:`compare_rankings` - two rankings of the same queries (per-query ranks of the first relevant
  video): R@K, SumR or MRR through :func:`paired_bootstrap`.
* :func:`compare_aucs` - two scores of the same labelled items: AUC(a) - AUC(b), stratified paired
  bootstrap, optionally each AUC in its informative direction.
* :func:`compare_seeds` - one number per seed for each model: Student-t interval (paired) or Welch.
* :func:`single_mean` / :func:`bootstrap_mean` - one quantity with its interval (:class:`Estimate`),
  worded by :func:`describe_estimate` and, against a chance level, :func:`describe_vs_chance`.

Detectable difference (the rule used everywhere): the smallest true difference that this design
finds with power ``POWER`` (80%) at two-sided level ``1 - level`` (5%) is

    detectable = (q(1 - alpha / 2) + q(power)) * SE,

with ``q`` the standard normal quantile for bootstrap designs (2.80 x SE at 95% / 80%) and the
Student-t quantile with the design's degrees of freedom for t designs. SE is the bootstrap standard
deviation of the resampled difference, or the analytic standard error of a t design.
:meth:`Comparison.needed_n` inverts it: the sample size at which the detectable difference equals the
observed one, assuming SE shrinks as 1 / sqrt(n) (and, for t designs, degrees of freedom grow with n).

Everything is seeded (``numpy.random.default_rng(seed)``) and deterministic. Leaf module: it imports
only numpy, scipy and :mod:`ralbook.errors`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from scipy import stats as _sps

from ralbook.errors import ConfigError, DataError

__all__ = [
    "POWER", "LEVEL", "N_BOOT", "RANKING_METRICS", "Comparison", "Estimate", "detectable_difference",
    "paired_bootstrap", "ranking_values", "compare_rankings", "fast_auc", "compare_aucs", "compare_seeds",
    "single_mean", "bootstrap_mean", "describe", "describe_detectable", "describe_estimate", "describe_vs_chance", "summary_line",
]

POWER = 0.8  # power of the "detectable" rule
LEVEL = 0.95  # default interval level
N_BOOT = 2000  # default bootstrap resamples
RECALL_KS = (1, 5, 10, 100)
RANKING_METRICS = ("R@1", "R@5", "R@10", "R@100", "SumR", "MRR")
_CELLS = 4_000_000  # resampled values held in memory at once (chunks of resamples)

ArrayLike = Union[Sequence[float], np.ndarray]
Statistic = Callable[..., Any]


# ----------------------------------------------------------------------------- helpers


def _check_level(level: float, where: str) -> None:
    if not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ConfigError(f"{where}: level must be between 0 and 1 (e.g. 0.95), got {level!r}")


def _check_n_boot(n_boot: int, where: str) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ConfigError(f"{where}: n_boot must be an integer >= 2, got {n_boot!r}")


def _as_values(values: ArrayLike, where: str, name: str) -> np.ndarray:
    """A 1-D float64 array of finite values, or a DataError naming the function, the input and the problem."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{where}: {name} must be one value per item (1-D), got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{where}: {name} is empty; need at least one value")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise DataError(f"{where}: {name} holds {bad.size} non-finite value(s), first at index {int(bad[0])} "
                        f"({arr[bad[0]]}); expected finite numbers")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, where: str, unit: str) -> None:
    if a.shape != b.shape:
        raise DataError(f"{where}: a paired comparison needs one value per {_singular(unit)} in both inputs, "
                        f"got {a.size} and {b.size}")


def _singular(unit: str) -> str:
    if unit.endswith("ies"):
        return unit[:-3] + "y"
    if unit.endswith("s"):
        return unit[:-1]
    return unit


def _units(n: int, unit: str) -> str:
    return f"{n:,} {_singular(unit) if n == 1 else unit}"


def _quantile(p: float, df: Optional[float]) -> float:
    """Standard normal quantile (df None) or Student-t quantile with df degrees of freedom."""
    return float(_sps.norm.ppf(p)) if df is None else float(_sps.t.ppf(p, df))


def detectable_difference(se: float, level: float = LEVEL, power: float = POWER,
                          df: Optional[float] = None) -> float:
    """Smallest true difference found with ``power`` at two-sided level ``1 - level``.

    ``(q(1 - alpha/2) + q(power)) * se`` with normal quantiles (``df`` None: bootstrap designs; 2.80 x SE
    at 95% / 80%) or Student-t quantiles with ``df`` degrees of freedom (t designs). Infinite when the
    standard error is unknown (one seed) or ``df`` < 1e-9.
    """
    _check_level(level, "detectable_difference")
    if not 0.0 < power < 1.0:
        raise ConfigError(f"detectable_difference: power must be between 0 and 1, got {power!r}")
    if not math.isfinite(se) or (df is not None and not df > 1e-9):
        return math.inf
    alpha = 1.0 - level
    return (_quantile(1.0 - alpha / 2.0, df) + _quantile(power, df)) * se


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Comparison:
    """The difference ``a - b`` of one metric between two things measured on the same (or like) units.

    ``estimate`` is the observed difference, ``low``/``high`` its interval at ``level``; ``se`` the
    standard error behind ``detectable`` (see the module docstring for the rule) and ``df`` the degrees
    of freedom of a t design (None for bootstrap designs). ``n`` counts the units (pairs; for an unpaired
    design the size of ``a``'s group, with ``n_b`` the size of ``b``'s). ``flipped_a``/``flipped_b`` say
    that an AUC was taken as 1 - AUC (its informative direction). ``note`` carries a caveat the wording
    must state (e.g. one seed: no interval).
    """

    a: str
    b: str
    metric: str
    unit: str
    n: int
    estimate: float
    low: float
    high: float
    level: float
    method: str
    se: float
    detectable: float
    value_a: float
    value_b: float
    higher_is_better: bool = True
    df: Optional[float] = None
    power: float = POWER
    n_b: Optional[int] = None
    flipped_a: bool = False
    flipped_b: bool = False
    note: str = ""

    @property
    def paired(self) -> bool:
        return self.n_b is None

    @property
    def verdict(self) -> str:
        """"better" / "worse" for ``a`` when the interval excludes 0 (read through ``higher_is_better``),
        else "undecided". Never from the point estimate alone."""
        if self.low > 0.0:
            return "better" if self.higher_is_better else "worse"
        if self.high < 0.0:
            return "worse" if self.higher_is_better else "better"
        return "undecided"

    def within(self, margin: float) -> bool:
        """Whether the whole interval lies inside ``[-margin, +margin]`` (practical equivalence)."""
        return -margin <= self.low and self.high <= margin

    def needed_n(self, power: Optional[float] = None, size: Optional[float] = None) -> Optional[int]:
        """Units (per group, for unpaired designs) at which a true difference of ``size`` (default: the
        observed one) is detected with ``power`` (default: this comparison's) at this level.

        Assumes SE shrinks as 1/sqrt(n); t designs also scale their degrees of freedom with n - 1. None when
        the size is 0 (nothing to resolve) or the standard error is unknown (one seed, one item).
        """
        power = self.power if power is None else power
        size = abs(self.estimate) if size is None else abs(size)
        if size == 0.0 or not math.isfinite(self.se) or not math.isfinite(size):
            return None
        if self.df is None:
            k = detectable_difference(1.0, self.level, power)
            return max(1, math.ceil(self.n * (k * self.se / size) ** 2))
        if self.n < 2:
            return None

        def detects(m: int) -> bool:
            df = self.df * (m - 1) / (self.n - 1)
            return detectable_difference(self.se * math.sqrt(self.n / m), self.level, power, df) <= size

        high = 2
        while not detects(high):
            high *= 2
            if high > 2 ** 40:
                return None
        if high == 2:
            return 2
        low = high // 2  # not detected (checked by the loop above)
        while high - low > 1:  # detects(high) and not detects(low)
            mid = (low + high) // 2
            low, high = (low, mid) if detects(mid) else (mid, high)
        return high

    def detects(self, size: float) -> bool:
        """Whether this design finds a true difference of ``size`` with its power (``detectable <= |size|``)."""
        return self.detectable <= abs(size)

    def swapped(self) -> "Comparison":
        """The same comparison read as ``b - a`` (names, values, flips and interval exchanged)."""
        return dataclasses.replace(
            self, a=self.b, b=self.a, estimate=-self.estimate, low=-self.high, high=-self.low,
            value_a=self.value_b, value_b=self.value_a, flipped_a=self.flipped_b, flipped_b=self.flipped_a,
            n=self.n if self.n_b is None else self.n_b, n_b=None if self.n_b is None else self.n)

    def to_dict(self) -> dict[str, Any]:
        """Fields plus ``verdict`` and ``needed_n``; non-finite numbers become None (strict JSON has no
        infinity), read back by :meth:`from_dict`."""
        out = {k: _finite_or_none(v) for k, v in dataclasses.asdict(self).items()}
        out["verdict"] = self.verdict
        out["needed_n"] = self.needed_n()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Comparison":
        """Inverse of :meth:`to_dict` (None low/high/se/detectable -> the infinities they stood for)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"a", "b", "metric", "estimate", "low", "high"} - set(data)
        if missing:
            raise DataError(f"Comparison.from_dict: missing field(s) {sorted(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        fill = {"low": -math.inf, "high": math.inf, "se": math.inf, "detectable": math.inf,
                "value_a": math.nan, "value_b": math.nan, "estimate": math.nan}
        for key, default in fill.items():
            if kwargs.get(key) is None:
                kwargs[key] = default
        return cls(**kwargs)


@dataclass(frozen=True)
class Estimate:
    """One quantity with its interval: ``value`` in ``[low, high]`` at ``level`` over ``n`` units."""

    name: str
    metric: str
    unit: str
    n: int
    value: float
    low: float
    high: float
    level: float
    method: str
    se: float
    df: Optional[float] = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Fields; non-finite numbers become None (strict JSON)."""
        return {k: _finite_or_none(v) for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------- paired bootstrap


def _resample_chunks(rng: np.random.Generator, n: int, n_boot: int):
    """(chunk, n) index arrays, together ``n_boot`` rows; the chunk size depends on n only (determinism)."""
    chunk = max(1, min(n_boot, _CELLS // max(n, 1)))
    done = 0
    while done < n_boot:
        rows = min(chunk, n_boot - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def _apply(statistic: Statistic, values: np.ndarray, where: str) -> np.ndarray:
    try:
        return np.asarray(statistic(values, axis=-1), dtype=np.float64)
    except TypeError as err:
        raise ConfigError(f"{where}: statistic must accept (values, axis=-1) like numpy.mean; {err}") from err


def paired_bootstrap(a: ArrayLike, b: ArrayLike, statistic: Statistic = np.mean, *, name_a: str = "A",
                     name_b: str = "B", metric: str = "value", unit: str = "items", higher_is_better: bool = True,
                     n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Comparison:
    """``statistic(a) - statistic(b)`` for per-item values of the same items, with a paired bootstrap interval.

    Why paired: both values of an item share its difficulty, so resampling items (the same indices for
    both arrays) removes that shared variance from the difference. ``statistic`` must reduce along an
    axis like ``numpy.mean`` / ``numpy.median`` (called as ``statistic(x, axis=-1)``). The interval is the
    percentile interval of the ``n_boot`` resampled differences (fine for means of many items; it may
    under-cover slightly for a few dozen items), ``se`` their standard deviation. With one item no
    interval exists: the result is undecided with an infinite interval and a note.
    """
    where = "paired_bootstrap"
    _check_level(level, where)
    _check_n_boot(n_boot, where)
    x = _as_values(a, where, f"values of {name_a!r}")
    y = _as_values(b, where, f"values of {name_b!r}")
    _same_length(x, y, where, unit)
    n = x.size
    value_a = float(_apply(statistic, x, where))
    value_b = float(_apply(statistic, y, where))
    estimate = value_a - value_b
    method = f"paired bootstrap over {_units(n, unit)}, {n_boot} resamples, seed {seed}, percentile interval"
    if n < 2:
        return Comparison(name_a, name_b, metric, unit, n, estimate, -math.inf, math.inf, level, method,
                          math.inf, math.inf, value_a, value_b, higher_is_better,
                          note=f"one {_singular(unit)}: no interval can be computed")
    rng = np.random.default_rng(seed)
    diffs = np.concatenate([_apply(statistic, x[idx], where) - _apply(statistic, y[idx], where)
                            for idx in _resample_chunks(rng, n, n_boot)])
    low, high = _percentile_interval(diffs, level)
    se = float(np.std(diffs, ddof=1))
    return Comparison(name_a, name_b, metric, unit, n, estimate, low, high, level, method, se,
                      detectable_difference(se, level), value_a, value_b, higher_is_better)


# ----------------------------------------------------------------------------- rankings


def ranking_values(ranks: ArrayLike, metric: str, where: str = "ranking_values", name: str = "ranks") -> np.ndarray:
    """Per-query values whose mean is ``metric``: R@K 100 x [rank <= K], SumR the sum of the four, MRR 1/rank.

    ``ranks`` are 1-based ranks of each query's first relevant video (as :func:`ralbook.evaluate`
    computes them), so the mean of the values equals the workbook's metric exactly.
    """
    if metric not in RANKING_METRICS:
        raise ConfigError(f"{where}: metric must be one of {', '.join(RANKING_METRICS)}, got {metric!r}")
    r = _as_values(ranks, where, name)
    bad = np.flatnonzero((r < 1) | (r != np.round(r)))
    if bad.size:
        raise DataError(f"{where}: {name} must be 1-based integer ranks, got {r[bad[0]]} at index {int(bad[0])}")
    if metric == "MRR":
        return 1.0 / r
    if metric == "SumR":
        return sum(100.0 * (r <= k) for k in RECALL_KS)
    return 100.0 * (r <= int(metric[2:]))


def compare_rankings(ranks_a: ArrayLike, ranks_b: ArrayLike, metric: str, *, name_a: str = "A", name_b: str = "B",
                     unit: str = "queries", n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Comparison:
    """Two rankings of the same queries on R@1/5/10/100, SumR (percent) or MRR: paired bootstrap over queries.

    ``ranks_a[i]`` and ``ranks_b[i]`` must be the ranks of the same query ``i``.
    """
    where = "compare_rankings"
    x = ranking_values(ranks_a, metric, where, f"ranks of {name_a!r}")
    y = ranking_values(ranks_b, metric, where, f"ranks of {name_b!r}")
    return paired_bootstrap(x, y, np.mean, name_a=name_a, name_b=name_b, metric=metric, unit=unit,
                            higher_is_better=True, n_boot=n_boot, seed=seed, level=level)


# ----------------------------------------------------------------------------- AUC


def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC of each row: P(positive > negative) with ties one half, from mid-ranks (Mann-Whitney U)."""
    p = pos.shape[-1]
    q = neg.shape[-1]
    ranks = _sps.rankdata(np.concatenate([pos, neg], axis=-1), method="average", axis=-1)
    u = ranks[..., :p].sum(axis=-1) - p * (p + 1) / 2.0
    return u / (p * q)


def _labels_split(scores: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = np.flatnonzero(~np.isin(labels, (0.0, 1.0)))[0]
        raise DataError(f"{where}: labels must be 0 or 1, got {labels[bad]} at index {int(bad)}")
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    if pos.size == 0 or neg.size == 0:
        raise DataError(f"{where}: an AUC needs both labels, got {pos.size} positive(s) and {neg.size} negative(s)")
    return pos, neg


def fast_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """AUC of ``scores`` for 0/1 ``labels``: P(score of a 1 > score of a 0), ties counted one half.

    Rank-based (O(n log n)); equals the count over all (positive, negative) pairs.
    """
    where = "fast_auc"
    s = _as_values(scores, where, "scores")
    y = _as_values(labels, where, "labels")
    _same_length(s, y, where, "items")
    pos, neg = _labels_split(s, y, where)
    return float(_auc_rows(s[pos], s[neg]))


def _flip_sides(informative_direction: Union[bool, str]) -> tuple[bool, bool]:
    choices = {True: (True, True), False: (False, False), "both": (True, True), "none": (False, False),
               "a": (True, False), "b": (False, True)}
    if isinstance(informative_direction, (bool, str)) and informative_direction in choices:
        return choices[informative_direction]
    raise ConfigError(f"compare_aucs: informative_direction must be True, False, 'both', 'none', 'a' or 'b', "
                      f"got {informative_direction!r}")


def compare_aucs(scores_a: ArrayLike, scores_b: ArrayLike, labels: ArrayLike, *, name_a: str = "A",
                 name_b: str = "B", informative_direction: Union[bool, str] = False, unit: str = "items",
                 n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Comparison:
    """AUC(a) - AUC(b) of two scores of the same labelled items, with a stratified paired bootstrap.

    Each resample draws the positives and the negatives with replacement separately (so both classes
    are always present at their observed sizes) and applies the same draw to both scores.

    ``informative_direction`` (True/"both", or "a"/"b" for one side only): a score whose AUC is below 0.5
    separates the labels the other way round; it is then compared as 1 - AUC, the direction in which it
    is informative, recorded in ``flipped_a``/``flipped_b`` and stated by :func:`describe`. The direction
    is chosen once from the full sample and kept in every resample. A score whose direction is the claim
    under test (e.g. sigma) should not be flipped: use "b" to flip only the baseline.
    """
    where = "compare_aucs"
    _check_level(level, where)
    _check_n_boot(n_boot, where)
    sa = _as_values(scores_a, where, f"scores of {name_a!r}")
    sb = _as_values(scores_b, where, f"scores of {name_b!r}")
    y = _as_values(labels, where, "labels")
    _same_length(sa, sb, where, unit)
    _same_length(sa, y, where, unit)
    pos, neg = _labels_split(sa, y, where)
    flip_a, flip_b = _flip_sides(informative_direction)
    raw_a = float(_auc_rows(sa[pos], sa[neg]))
    raw_b = float(_auc_rows(sb[pos], sb[neg]))
    flipped_a = flip_a and raw_a < 0.5
    flipped_b = flip_b and raw_b < 0.5
    value_a = 1.0 - raw_a if flipped_a else raw_a
    value_b = 1.0 - raw_b if flipped_b else raw_b
    n = int(sa.size)
    method = (f"paired bootstrap over {_units(n, unit)} stratified by label ({pos.size} positive, {neg.size} "
              f"negative), {n_boot} resamples, seed {seed}, percentile interval")
    rng = np.random.default_rng(seed)
    diffs = []
    chunk = max(1, min(n_boot, _CELLS // n))
    done = 0
    while done < n_boot:
        rows = min(chunk, n_boot - done)
        ip = pos[rng.integers(0, pos.size, size=(rows, pos.size))]
        ineg = neg[rng.integers(0, neg.size, size=(rows, neg.size))]
        auc_a = _auc_rows(sa[ip], sa[ineg])
        auc_b = _auc_rows(sb[ip], sb[ineg])
        diffs.append((1.0 - auc_a if flipped_a else auc_a) - (1.0 - auc_b if flipped_b else auc_b))
        done += rows
    d = np.concatenate(diffs)
    low, high = _percentile_interval(d, level)
    se = float(np.std(d, ddof=1))
    return Comparison(name_a, name_b, "AUC", unit, n, value_a - value_b, low, high, level, method, se,
                      detectable_difference(se, level), value_a, value_b, True,
                      flipped_a=flipped_a, flipped_b=flipped_b)


# ----------------------------------------------------------------------------- seeds


def compare_seeds(values_a: ArrayLike, values_b: ArrayLike, paired: bool = True, *, name_a: str = "A",
                  name_b: str = "B", metric: str = "value", unit: str = "seeds", higher_is_better: bool = True,
                  level: float = LEVEL) -> Comparison:
    """Mean difference of one number per seed, with a Student-t interval (paired) or Welch's (unpaired).

    Why t: with 2-5 seeds a normal or bootstrap interval is far too narrow; the t interval is exact for
    normal seed noise. Paired (``values_a[i]``, ``values_b[i]`` from the same seed) uses the differences'
    standard deviation with n - 1 degrees of freedom; unpaired uses Welch's standard error and
    Welch-Satterthwaite degrees of freedom. One seed (in either group) gives no interval: undecided,
    infinite bounds and a note saying so.
    """
    where = "compare_seeds"
    _check_level(level, where)
    x = _as_values(values_a, where, f"values of {name_a!r}")
    y = _as_values(values_b, where, f"values of {name_b!r}")
    alpha = 1.0 - level
    value_a, value_b = float(x.mean()), float(y.mean())
    estimate = value_a - value_b
    if paired:
        _same_length(x, y, where, unit)
        n, n_b = int(x.size), None
        method = f"paired t over {_units(n, unit)}"
        if n < 2:
            se, df = math.inf, None
        else:
            se = float(np.std(x - y, ddof=1) / math.sqrt(n))
            df = float(n - 1)
    else:
        n, n_b = int(x.size), int(y.size)
        method = f"Welch t, unpaired, {x.size} and {y.size} {unit}"
        if min(n, n_b) < 2:
            se, df = math.inf, None
        else:
            va, vb = float(np.var(x, ddof=1)) / n, float(np.var(y, ddof=1)) / n_b
            se = math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va ** 2 / (n - 1) + vb ** 2 / (n_b - 1)) if va + vb > 0 else float(n + n_b - 2)
    if not math.isfinite(se):
        return Comparison(name_a, name_b, metric, unit, n, estimate, -math.inf, math.inf, level, method, math.inf,
                          math.inf, value_a, value_b, higher_is_better, None, n_b=n_b,
                          note=f"one {_singular(unit)} in a group: no interval can be computed; at least 2 are needed")
    half = _quantile(1.0 - alpha / 2.0, df) * se
    return Comparison(name_a, name_b, metric, unit, n, estimate, estimate - half, estimate + half, level,
                      method + f", {df:.3g} degrees of freedom", se, detectable_difference(se, level, df=df),
                      value_a, value_b, higher_is_better, df, n_b=n_b)


def single_mean(values: ArrayLike, *, name: str = "value", metric: str = "", unit: str = "seeds",
                level: float = LEVEL) -> Estimate:
    """Mean of a few numbers (e.g. one per seed) with a Student-t interval; one value -> infinite interval."""
    where = "single_mean"
    _check_level(level, where)
    x = _as_values(values, where, f"values of {name!r}")
    n = int(x.size)
    value = float(x.mean())
    if n < 2:
        return Estimate(name, metric, unit, n, value, -math.inf, math.inf, level, f"t over {_units(n, unit)}",
                        math.inf, None, note=f"one {_singular(unit)}: no interval can be computed")
    se = float(np.std(x, ddof=1) / math.sqrt(n))
    half = _quantile(1.0 - (1.0 - level) / 2.0, n - 1) * se
    return Estimate(name, metric, unit, n, value, value - half, value + half, level,
                    f"t over {_units(n, unit)}, {n - 1} degrees of freedom", se, float(n - 1))


def bootstrap_mean(values: ArrayLike, *, name: str = "value", metric: str = "", unit: str = "items",
                   n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of per-item values with a percentile bootstrap interval (items resampled with replacement)."""
    where = "bootstrap_mean"
    _check_level(level, where)
    _check_n_boot(n_boot, where)
    x = _as_values(values, where, f"values of {name!r}")
    n = int(x.size)
    method = f"bootstrap over {_units(n, unit)}, {n_boot} resamples, seed {seed}, percentile interval"
    if n < 2:
        return Estimate(name, metric, unit, n, float(x.mean()), -math.inf, math.inf, level, method, math.inf,
                        note=f"one {_singular(unit)}: no interval can be computed")
    rng = np.random.default_rng(seed)
    means = np.concatenate([x[idx].mean(axis=-1) for idx in _resample_chunks(rng, n, n_boot)])
    low, high = _percentile_interval(means, level)
    return Estimate(name, metric, unit, n, float(x.mean()), low, high, level, method, float(np.std(means, ddof=1)))


# ----------------------------------------------------------------------------- wording


def _auto_digits(*values: float) -> int:
    """Decimals that show the interval's half-width (else the value) to two significant digits, 1..4."""
    for v in values:
        if math.isfinite(v) and v > 0:
            return int(min(4, max(1, 1 - math.floor(math.log10(v)))))
    return 2


def _num(x: float, digits: int, sign: bool = False) -> str:
    if math.isinf(x):
        return ("+" if sign else "") + "infinity" if x > 0 else "minus infinity"
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    if float(text) == 0.0:  # no "-0.0"
        text = ("+" if sign else "") + f"{0.0:.{digits}f}"
    return text


def _design(c: Comparison) -> str:
    if c.paired:
        return f"paired over {_units(c.n, c.unit)}"
    return f"unpaired, {c.n} and {c.n_b} {c.unit}"


def _flips(c: Comparison, digits: int) -> str:
    parts = []
    for flipped, name, value in ((c.flipped_a, c.a, c.value_a), (c.flipped_b, c.b, c.value_b)):
        if flipped:
            parts.append(f"{name} is taken in its informative direction (its AUC {_num(1.0 - value, digits)} is "
                         f"below 0.5, so it is compared as 1 - AUC = {_num(value, digits)})")
    return "; ".join(parts)


def summary_line(c: Comparison, digits: Optional[int] = None) -> str:
    """Table cell for the difference a - b: ``"+1.2 [-0.3, 2.6]"`` (no verdict words)."""
    d = _auto_digits((c.high - c.low) / 2.0, abs(c.estimate)) if digits is None else digits
    return f"{_num(c.estimate, d, sign=True)} [{_num(c.low, d)}, {_num(c.high, d)}]"


def describe(c: Comparison, what: Optional[str] = None, digits: Optional[int] = None,
             negligible: Optional[float] = None) -> str:
    """The one sentence for a comparison, with three outcomes worded differently.

    * better / worse (interval excludes 0): "A is better than B on SumR by 4.1 (95% CI 1.2 to 7.0, paired
      over 711 queries)"; the size and interval are those of the gain (or loss) of A, so swapping the
      inputs gives "B is worse than A ..." with the same numbers.
    * undecided: "A and B cannot be told apart on SumR at this size (difference A - B +0.3, 95% CI -1.2 to
      1.8); about N queries would resolve a difference of this size" (N from :meth:`Comparison.needed_n`).
    * ``negligible`` (a practical-equivalence margin the caller justifies; off by default): an interval
      inside +-margin reads "equivalent within +-margin"; a decided difference inside it is called smaller
      than the margin.

    ``what`` names the measured quantity (default ``c.metric``), e.g. "fused SumR on the test split";
    ``digits`` defaults to two significant digits of the interval's half-width.
    """
    what = c.metric if what is None else what
    half = (c.high - c.low) / 2.0
    d = _auto_digits(half, abs(c.estimate)) if digits is None else digits
    level = f"{100 * c.level:g}% CI"
    flips = _flips(c, d)
    tail = f"; {flips}" if flips else ""
    verdict = c.verdict
    if verdict != "undecided":
        sign = 1.0 if (verdict == "better") == c.higher_is_better else -1.0
        size, lo, hi = sign * c.estimate, sign * c.low, sign * c.high
        lo, hi = min(lo, hi), max(lo, hi)
        text = (f"{c.a} is {verdict} than {c.b} on {what} by {_num(size, d)} "
                f"({level} {_num(lo, d)} to {_num(hi, d)}, {_design(c)})")
        if negligible is not None and c.within(negligible):
            text += f", a difference smaller than the negligible margin ±{_num(negligible, d)}"
        return text + tail + "."
    diff = f"difference {c.a} - {c.b} {_num(c.estimate, d, sign=True)}"
    if negligible is not None and c.within(negligible):
        return (f"{c.a} and {c.b} are equivalent on {what} within ±{_num(negligible, d)} "
                f"({diff}, {level} {_num(c.low, d)} to {_num(c.high, d)}, {_design(c)}){tail}.")
    if not math.isfinite(c.se):
        return (f"{c.a} and {c.b} cannot be told apart on {what} with {_units(c.n, c.unit)} ({diff}; "
                f"{c.note or 'no interval can be computed'}){tail}.")
    text = (f"{c.a} and {c.b} cannot be told apart on {what} at this size "
            f"({diff}, {level} {_num(c.low, d)} to {_num(c.high, d)}, {_design(c)})")
    needed = c.needed_n()
    if needed is None:
        text += "; the observed difference is exactly 0, so no sample size follows from it"
    else:
        per = " per group" if not c.paired else ""
        text += f"; about {_units(needed, c.unit)}{per} would resolve a difference of this size"
    return text + tail + "."


def describe_detectable(c: Comparison, size: Optional[float] = None, label: str = "a difference of that size",
                        digits: Optional[int] = None) -> str:
    """What the design could have found: "With 3 seeds this design detects a true difference of 9.3 on SumR
    (80% power, 5% two-sided); a gain of 9.7 (the paper's) is within its reach." With ``size`` it also says
    whether that size is within reach and, if not, how many units would bring it there."""
    d = _auto_digits(c.detectable if math.isfinite(c.detectable) else abs(c.estimate)) if digits is None else digits
    design = _units(c.n, c.unit) if c.paired else f"{c.n} and {c.n_b} {c.unit}"
    test = f"{100 * c.power:g}% power, {100 * (1 - c.level):g}% two-sided"
    if not math.isfinite(c.detectable):
        text = f"With {design} this design cannot detect any difference on {c.metric} ({c.note or 'no standard error'})"
    else:
        text = f"With {design} this design detects a true difference of {_num(c.detectable, d)} on {c.metric} ({test})"
    if size is None:
        return text + "."
    if c.detects(size):
        return text + f"; {label} ({_num(abs(size), d)}) is within its reach."
    needed = c.needed_n(size=size)
    more = f": about {_units(needed, c.unit)}{'' if c.paired else ' per group'} would detect it" if needed else ""
    return text + f"; {label} ({_num(abs(size), d)}) is not within its reach{more}."


def describe_estimate(e: Estimate, what: Optional[str] = None, digits: Optional[int] = None) -> str:
    """"SumR of RAL is 120.3 (95% CI 110.0 to 130.6, t over 3 seeds)"; one unit says no interval exists."""
    what = (f"{e.metric} of {e.name}" if e.metric else e.name) if what is None else what
    d = _auto_digits((e.high - e.low) / 2.0, abs(e.value)) if digits is None else digits
    if not math.isfinite(e.high - e.low):
        return f"{what} is {_num(e.value, d)} ({e.note or 'no interval can be computed'})."
    return f"{what} is {_num(e.value, d)} ({100 * e.level:g}% CI {_num(e.low, d)} to {_num(e.high, d)}, {e.method})."


def describe_vs_chance(value: Union[Estimate, float], interval: Optional[tuple[float, float]] = None, *,
                       chance: float, what: str = "the value", level: float = LEVEL,
                       digits: Optional[int] = None) -> str:
    """Whether a quantity is above / below a chance level, from its interval (never from the value alone).

    ``value`` is an :class:`Estimate` (its interval and level are used) or a number with ``interval``.
    "above chance" when the interval lies above ``chance``, "below chance" when below, else "cannot be
    told from chance at this size".
    """
    if isinstance(value, Estimate):
        v, (lo, hi), level = value.value, (value.low, value.high), value.level
    else:
        if interval is None:
            raise ConfigError("describe_vs_chance: a number needs its interval (low, high)")
        v, (lo, hi) = float(value), (float(interval[0]), float(interval[1]))
    if lo > hi:
        raise ConfigError(f"describe_vs_chance: interval must be (low, high), got ({lo}, {hi})")
    d = _auto_digits((hi - lo) / 2.0, abs(v)) if digits is None else digits
    numbers = f"{_num(v, d)}, {100 * level:g}% CI {_num(lo, d)} to {_num(hi, d)}, chance {_num(chance, d)}"
    if lo > chance:
        return f"{what} is above chance ({numbers})."
    if hi < chance:
        return f"{what} is below chance ({numbers})."
    return f"{what} cannot be told from chance at this size ({numbers})."
