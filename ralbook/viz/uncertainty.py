"""Figures of the uncertainty benchmark: risk-coverage curves and the reliability diagram.

Plain arrays and dicts in, a matplotlib Figure out (like :mod:`ralbook.viz.plots`, whose palette and
``save_figure`` they share); every text is at least 10 pt so the figures stay readable on a slide.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ralbook.viz.plots import _colors

FONT = 11  # points: every label, tick and legend entry


def _readable(ax: Any) -> None:
    ax.tick_params(labelsize=FONT)
    ax.xaxis.label.set_size(FONT + 1)
    ax.yaxis.label.set_size(FONT + 1)
    ax.title.set_size(FONT + 1)


def risk_coverage_figure(curves: Mapping[str, Any], title: str = "", highlight: Sequence[str] = ()) -> Figure:
    """Risk (share of kept queries whose top result is wrong) against coverage, every method on one axis,
    with the oracle ordering (the lowest any method can reach) and the random one (flat at the mean risk).

    ``curves``: ``{"coverage": [...], "oracle": [...], "random": [...], "methods": {name: [...]}}`` as
    :func:`ralbook.studies.uncertainty_methods.curves` returns it. ``highlight``: methods drawn thicker.
    """
    coverage = np.asarray(curves["coverage"], dtype=float)
    methods = curves["methods"]
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for color, (name, risk) in zip(_colors(len(methods)), methods.items()):
        ax.plot(coverage, risk, color=color, lw=2.6 if name in highlight else 1.5, label=name)
    ax.plot(coverage, curves["oracle"], color="black", lw=1.8, ls="--", label="oracle ordering")
    ax.plot(coverage, curves["random"], color="grey", lw=1.8, ls=":", label="random ordering")
    ax.set_xlabel("coverage (share of queries answered, most confident first)")
    ax.set_ylabel("risk (share answered wrongly)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=FONT - 1, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _readable(ax)
    fig.tight_layout()
    return fig


def reliability_figure(tables: Mapping[str, Mapping[str, Sequence[float]]], ece: Optional[Mapping[str, Any]] = None,
                       title: str = "") -> Figure:
    """Reliability diagram: observed hit rate against predicted probability per bin, one line per
    probability (marker area ~ queries in the bin), the diagonal = perfect calibration.

    ``tables``: name -> reliability table (``confidence``, ``accuracy``, ``count``); ``ece``: name ->
    [estimate, low, high], shown in the legend.
    """
    fig, ax = plt.subplots(figsize=(6.0, 5.5))
    ax.plot([0, 1], [0, 1], color="black", lw=1.2, ls="--", label="perfect calibration")
    for color, (name, t) in zip(_colors(len(tables)), tables.items()):
        count = np.asarray(t["count"], dtype=float)
        label = name
        if ece and name in ece:
            est, low, high = ece[name]
            label = f"{name} (ECE {est:.3f} [{low:.3f}, {high:.3f}])"
        ax.plot(t["confidence"], t["accuracy"], color=color, lw=1.5, label=label)
        ax.scatter(t["confidence"], t["accuracy"], s=20 + 200 * count / max(count.max(), 1.0), color=color,
                   alpha=0.7, edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability that the top result is right")
    ax.set_ylabel("observed hit rate at rank 1")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=FONT - 1, loc="upper left", frameon=False)
    _readable(ax)
    fig.tight_layout()
    return fig


__all__ = ["FONT", "reliability_figure", "risk_coverage_figure"]
