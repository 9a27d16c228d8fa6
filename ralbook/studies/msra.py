"""MSRA diagnostics: how much of the objective MSRA is, whether its terms moved from their reference
values, and how wide its Gaussians are next to their means.

Why: RAL's MSRA adds two terms (L_PM, L_DA) with small weights (0.004, 0.00025) and a sigma per
instance. Whether MSRA does anything on a run is visible in three numbers a researcher looks for:

* each loss term's **share of the total** per epoch (weighted part / total, from ``metrics.jsonl``);
* the **unweighted** L_PM against its uniform-guess value ``log(B * K)``: with all proxy similarities
  equal, each row's softmax over the ``B * K`` proxies of the batch gives every column ``1 / (B K)``,
  so minus the mean log-probability of the K positives is ``log(B K)``
  (:func:`ralbook.losses.proxy_matching`); a run's epoch mean averages that over its batches, the last
  one short. L_DA against its value with ``sigma = 1`` (the prior's width) and identical unit-length
  means, in expectation over the proxy noise: ``1 + 2 d / K`` (see :func:`da_reference`);
* **sigma's scale against the mean's**: ``||sigma|| / ||mu||`` per item (the typical distance of a
  sampled proxy from its mean, relative to the mean's length), with a bootstrap interval over items.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ralbook import stats
from ralbook.errors import DataError
from ralbook.losses import weights

MSRA_TERMS: tuple[str, ...] = ("proxy_matching", "distribution_alignment")
TERM_NAMES = {"proxy_matching": "L_PM", "distribution_alignment": "L_DA"}


def loss_shares(records: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Each weighted loss part's share of the total, per epoch (part / total; NaN where a part is absent).

    The parts are all non-negative, so the shares of an epoch sum to 1. Raises DataError naming the epoch
    when a record has no positive total.
    """
    names = list(dict.fromkeys(k for r in records for k in r.get("loss", {}) if k != "total"))
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in records:
        loss = r.get("loss", {})
        total = float(loss.get("total", math.nan))
        if not total > 0:
            raise DataError(f"epoch {r.get('epoch')}: loss total must be positive to share it out, got {total}")
        for n in names:
            out[n].append(float(loss[n]) / total if n in loss else math.nan)
    return out


def unweighted_terms(records: Sequence[Mapping[str, Any]], loss_cfg: Any,
                     names: Sequence[str] = MSRA_TERMS) -> dict[str, list[float]]:
    """The raw (unweighted) epoch means of ``names``: the recorded weighted part divided by its weight
    (:func:`ralbook.losses.weights`). Terms with weight 0 or never recorded are left out."""
    w = weights(loss_cfg)
    out = {}
    for n in names:
        if w.get(n, 0.0) == 0.0 or not any(n in r.get("loss", {}) for r in records):
            continue
        out[n] = [float(r["loss"][n]) / w[n] if n in r.get("loss", {}) else math.nan for r in records]
    return out


def batch_sizes(n_items: int, batch_size: int) -> list[int]:
    """Sizes of an epoch's batches (:func:`ralbook.training.reproducibility.epoch_batches`: the last one short)."""
    if n_items < 1 or batch_size < 1:
        raise DataError(f"batch_sizes: need at least one item and a positive batch size, got {n_items}, {batch_size}")
    full, rest = divmod(n_items, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def pm_uniform_value(sizes: Sequence[int], k: int) -> float:
    """L_PM of a uniform guess, averaged over an epoch's batches as the run averages it: mean of log(B_i K)."""
    if not sizes or k < 1:
        raise DataError(f"pm_uniform_value: need batch sizes and K >= 1, got {list(sizes)} and {k}")
    return float(np.mean([math.log(b * k) for b in sizes]))


def da_reference(dim: int, k: int) -> float:
    """Expected L_DA when both Gaussians have sigma = 1 and the same unit-length mean: ``1 + 2 d / K``.

    With log sigma = 0 each KL term is 0.5 ||mu_bar||^2, and mu_bar (the mean of K proxies) is the mean
    plus noise of variance 1 / K per dimension: E = 0.5 (1 + d / K) each. The cross term is then
    0.5 ||mu_bar_t - mu_bar_v||^2 with E = d / K (two independent noises). Sum: 1 + 2 d / K.
    """
    if dim < 1 or k < 1:
        raise DataError(f"da_reference: need d >= 1 and K >= 1, got {dim} and {k}")
    return 1.0 + 2.0 * dim / k


def sigma_to_mean(mu: Any, log_sigma: Any) -> np.ndarray:
    """Per item ``||sigma|| / ||mu||`` with ``sigma = exp(log_sigma)`` (rows of (N, d) arrays)."""
    m = np.asarray(mu, dtype=np.float64)
    s = np.exp(np.asarray(log_sigma, dtype=np.float64))
    if m.shape != s.shape or m.ndim != 2:
        raise DataError(f"sigma_to_mean: mu and log_sigma must be (N, d) of one shape, got {m.shape} and {s.shape}")
    norm = np.linalg.norm(m, axis=1)
    if np.any(norm == 0):
        raise DataError(f"sigma_to_mean: mean of item {int(np.flatnonzero(norm == 0)[0])} has length 0")
    return np.linalg.norm(s, axis=1) / norm


def scale_estimates(groups: Mapping[str, tuple[Any, Any]], n_boot: int = stats.N_BOOT,
                    seed: int = 0) -> dict[str, stats.Estimate]:
    """Mean ``||sigma|| / ||mu||`` of each group (name -> (mu, log_sigma)) with a bootstrap interval over items."""
    return {name: stats.bootstrap_mean(sigma_to_mean(mu, ls), name=name, metric="||sigma|| / ||mu||",
                                       unit=name, n_boot=n_boot, seed=seed)
            for name, (mu, ls) in groups.items()}


def msra_text(shares: Mapping[str, Sequence[float]], raw: Mapping[str, Sequence[float]],
              references: Mapping[str, float], epochs: Sequence[int],
              scales: Optional[Mapping[str, stats.Estimate]] = None) -> list[str]:
    """Sentences (no verdict words without an interval) on MSRA's share of the loss, its terms against
    their references at the last epoch, and sigma's scale against the mean's."""
    lines = []
    msra = [n for n in MSRA_TERMS if n in shares]
    if not msra:
        lines.append("This run records no MSRA terms (model.msra off), so MSRA took no part in training.")
    else:
        per_epoch = np.nansum([np.asarray(shares[n], dtype=float) for n in msra], axis=0)
        lines.append(f"MSRA's weighted terms ({' + '.join(TERM_NAMES[n] for n in msra)}) are "
                     f"{100 * per_epoch[-1]:.2f}% of the total loss at epoch {epochs[-1]} (from {100 * per_epoch.min():.2f}% "
                     f"to {100 * per_epoch.max():.2f}% over the {len(epochs)} epochs); the other terms make up the rest.")
    for n, values in raw.items():
        if n not in references:
            continue
        last, ref = float(values[-1]), float(references[n])
        first = float(values[0])
        if n == "proxy_matching":
            lines.append(f"Unweighted L_PM is {last:.3f} at epoch {epochs[-1]} (epoch {epochs[0]}: {first:.3f}) "
                         f"against {ref:.3f} for a uniform guess log(B·K), {100 * abs(ref - last) / ref:.1f}% "
                         f"{'below' if last < ref else 'above'} it (0% = the proxies tell no more than a guess about "
                         "which captions go with which video; 100% below = a loss of 0; above = worse than the guess).")
        else:
            lines.append(f"Unweighted L_DA is {last:.3f} at epoch {epochs[-1]} (epoch {epochs[0]}: {first:.3f}) "
                         f"against {ref:.3f}, its expected value with sigma = 1 and identical means.")
    for name, e in (scales or {}).items():
        lines.append(f"For {name}, ||sigma|| / ||mu|| is {e.value:.3g} (95% CI {e.low:.3g} to {e.high:.3g}, "
                     f"{e.n} {name}): a sampled proxy lies about {e.value:.3g} times the mean's length from its mean.")
    return lines


__all__ = ["MSRA_TERMS", "TERM_NAMES", "loss_shares", "unweighted_terms", "batch_sizes", "pm_uniform_value",
           "da_reference", "sigma_to_mean", "scale_estimates", "msra_text"]
