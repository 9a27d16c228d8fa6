"""Figures of the notebooks: each function takes plain arrays/dicts and returns a matplotlib Figure.

Readable on a projector: every text is at least :data:`MIN_FONT` points at the size the notebook shows
the figure (figures are at most :data:`DISPLAY_WIDTH_IN` wide, so the browser never shrinks them), labels
wrap on spaces (:func:`wrap_label`, never inside a word), different items get colours that differ
(:func:`distinct_colors`), and a colour scale whose middle means something is centred there.

Figures are created through ``pyplot`` so that Jupyter shows them inline; in a loop or a test,
close them (``plt.close(fig)``) once saved. :func:`save_figure` writes PNG (for slides and the
README) and PDF (for papers) under a name that should say which notebook and run made it,
e.g. ``04_uncertainty_demo-run_sigma_hist``.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator


PALETTE = "colorblind"
# The colorblind palette's ten entries in an order that keeps the first n far apart (greedy farthest point in
# CIELAB, grey moved last because grey also means "background"): the first 5 differ by dE > 40, all 10 by > 20.
# Seaborn's own order puts orange and vermillion second and fourth: 4 videos got two near-identical colours.
_DISTINCT_ORDER = (0, 3, 2, 8, 4, 5, 9, 1, 6, 7)
MIN_FONT = 10.0           # smallest text of any figure, in points at the displayed size
DISPLAY_WIDTH_IN = 9.0    # a notebook's output area at figure.dpi 100 (about 900 px): wider figures get shrunk
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")

sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
# seaborn's "notebook" context: 11-12 pt ticks, labels and legends; the floor keeps every default >= MIN_FONT
matplotlib.rcParams.update({key: max(MIN_FONT, float(matplotlib.rcParams[key])) for key in
                            ("font.size", "axes.labelsize", "axes.titlesize", "xtick.labelsize", "ytick.labelsize",
                             "legend.fontsize", "legend.title_fontsize") if isinstance(matplotlib.rcParams[key], (int, float))})
matplotlib.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "pdf.fonttype": 42})


def figure_name(*parts: str) -> str:
    """Join name parts with '_' and replace characters unsafe in file names: ('04_uncertainty', 'a/b') -> '04_uncertainty_a-b'."""
    return "_".join(_SAFE_NAME.sub("-", str(p)).strip("-") for p in parts if str(p))


def save_figure(fig: Figure, name: str, figures_dir: str | Path = "outputs/figures") -> list[Path]:
    """Write ``figures_dir/name.png`` (150 dpi) and ``figures_dir/name.pdf``; returns both paths.

    ``name`` must be a plain file stem (see :func:`figure_name`); the folder is created if needed.
    """
    if not name or name != _SAFE_NAME.sub("-", name):
        raise ValueError(f"figure name {name!r} must be a plain file stem (letters, digits, . _ + -)")
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


class FigureSaver:
    """Saves a notebook's figures as ``<notebook>_<run>_<what>`` and remembers the files written.

    ``save = FigureSaver("figures", "04_uncertainty", "demo-run"); save(fig, "sigma_hist"); save.paths``
    """

    def __init__(self, figures_dir: str | Path, notebook: str, run: str):
        self.figures_dir, self.notebook, self.run = Path(figures_dir), notebook, run
        self.paths: list[Path] = []

    def __call__(self, fig: Figure, what: str) -> list[Path]:
        written = save_figure(fig, figure_name(self.notebook, self.run, what), self.figures_dir)
        self.paths.extend(written)
        return written


def distinct_colors(n: int) -> list[tuple[float, float, float]]:
    """``n`` RGB colours that differ from each other: the colorblind palette (far-apart order) up to 10,
    tab20 up to 20, evenly spaced hues beyond (a legend of more than 20 colours needs labels instead)."""
    n = max(int(n), 1)
    if n <= len(_DISTINCT_ORDER):
        base = sns.color_palette(PALETTE, n_colors=len(_DISTINCT_ORDER))
        return [tuple(base[i]) for i in _DISTINCT_ORDER[:n]]
    if n <= 20:
        return [tuple(c) for c in sns.color_palette("tab20", n_colors=n)]
    return [tuple(c) for c in sns.color_palette("husl", n_colors=n)]


_colors = distinct_colors


def wrap_label(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters at spaces only: a word longer than the
    width keeps its own line whole (never cut mid-word, never hyphenated)."""
    return "\n".join(textwrap.wrap(str(text), width=max(int(width), 1), break_long_words=False,
                                    break_on_hyphens=False)) or str(text)


def _chars_for(width_in: float, fontsize: float = MIN_FONT) -> int:
    """About how many characters of a ``fontsize`` text fit ``width_in`` inches (average glyph ~0.55 em)."""
    return max(8, int(width_in * 72 / (0.55 * fontsize)))


def _text_fits(ax, x: float, y: float, text: str, width_data: float, height_data: float, **kwargs) -> bool:
    """Whether ``text`` at MIN_FONT, drawn at (x, y), fits a box of that size in data units (measured)."""
    fig = ax.figure
    artist = ax.text(x, y, text, fontsize=MIN_FONT, **kwargs)
    box = artist.get_window_extent(renderer=fig.canvas.get_renderer())
    artist.remove()
    (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (width_data, height_data)])
    return box.width <= abs(x1 - x0) and box.height <= abs(y1 - y0)


# ----------------------------------------------------------------------------- 01 data inspection


def split_counts(counts: Mapping[str, Mapping[str, int]]) -> Figure:
    """Grouped bars: for each split (outer key) the number of each item (inner keys, e.g. videos, captions)."""
    splits = list(counts)
    items = list(dict.fromkeys(k for s in splits for k in counts[s]))
    fig, ax = plt.subplots(figsize=(min(DISPLAY_WIDTH_IN - 2.0, 1.6 + 1.4 * len(splits)), 3.6))
    width = 0.8 / max(len(items), 1)
    x = np.arange(len(splits))
    for i, (item, color) in enumerate(zip(items, _colors(len(items)))):
        vals = [counts[s].get(item, 0) for s in splits]
        bars = ax.bar(x + (i - (len(items) - 1) / 2) * width, vals, width, label=item, color=color)
        ax.bar_label(bars, fmt="%d", fontsize=MIN_FONT)
    ax.set_xticks(x, splits)
    ax.set_ylabel("count")
    ax.set_title("Videos and captions per split")
    ax.legend()
    fig.tight_layout()
    return fig


def shared_bin_edges(series: Sequence[np.ndarray], discrete: bool = False, max_bins: int = 40) -> np.ndarray:
    """One set of bin edges for several samples (the splits of a histogram), so their bars line up:
    one bin per integer when ``discrete``, else numpy's 'auto' rule on the pooled values (at most ``max_bins``)."""
    pooled = np.concatenate([np.asarray(v, dtype=float).ravel() for v in series]) if len(series) else np.array([])
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        return np.array([0.0, 1.0])
    lo, hi = float(pooled.min()), float(pooled.max())
    if discrete:
        step = max(1, int(np.ceil((hi - lo + 1) / max_bins)))
        return np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 0.5 + step, step)
    if hi == lo:
        return np.array([lo - 0.5, lo + 0.5])
    edges = np.histogram_bin_edges(pooled, bins="auto")
    return edges if len(edges) - 1 <= max_bins else np.linspace(lo, hi, max_bins + 1)


def histogram_grid(panels: Mapping[str, Mapping[str, np.ndarray]], ncols: int = 2,
                   discrete: Sequence[str] = ()) -> Figure:
    """One histogram per panel (outer key = quantity), one colour per split (inner key), density per split.

    All splits of a panel share one set of bin edges (:func:`shared_bin_edges`), so a taller bar means a
    larger share, not a narrower bin. Quantities named in ``discrete`` get one bin per integer.
    """
    names = list(panels)
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(DISPLAY_WIDTH_IN - 0.2, 3.3 * nrows),
                             squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names):
        series = panels[name]
        edges = shared_bin_edges([v for v in series.values()], discrete=name in discrete)
        for (split, values), color in zip(series.items(), _colors(len(series))):
            v = np.asarray(values, dtype=float).ravel()
            if v.size == 0:
                continue
            sns.histplot(v, ax=ax, label=split, color=color, stat="density", element="step", fill=True, alpha=0.3,
                         bins=edges, common_norm=False)
        ax.set_title(name)
        ax.set_xlabel(name)
        ax.legend(fontsize=MIN_FONT)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return fig


def moment_timelines(videos: Sequence[tuple[str, int, Sequence[tuple]]], group_title: str = "") -> Figure:
    """Ground-truth moments: one row per video, a bar per span over the video's length (grey = background).

    A span is ``(start, end, label)`` or ``(start, end, label, group)``: the colour means the group (e.g. the
    action's concept family; the legend names the groups), else the label. A label is written on its bar at
    full size, or on two lines, only where it fits (measured); a bar too short for it stays unlabelled.
    """
    height = 0.62
    fig, ax = plt.subplots(figsize=(6.6, 0.9 + 0.55 * len(videos)))
    groups = list(dict.fromkeys(sp[3] if len(sp) > 3 else sp[2] for _, _, spans in videos for sp in spans))
    color_of = dict(zip(groups, _colors(len(groups))))
    longest = max((n for _, n, _ in videos), default=1)
    ax.set_xlim(0, longest)
    ax.set_ylim(len(videos) - 0.5, -0.5)
    for row, (video_id, n_frames, spans) in enumerate(videos):
        ax.broken_barh([(0, n_frames)], (row - 0.4, 0.8), facecolors="0.92", edgecolors="0.6")
        for span in spans:
            start, end, label = span[:3]
            group = span[3] if len(span) > 3 else label
            ax.broken_barh([(start, end - start)], (row - height / 2, height), facecolors=color_of[group])
            for text in (label, wrap_label(label, max(len(label) // 2 + 1, 1))):
                if _text_fits(ax, (start + end) / 2, row, text, 0.95 * (end - start), height,
                              ha="center", va="center"):
                    ax.text((start + end) / 2, row, text, ha="center", va="center", fontsize=MIN_FONT)
                    break
    ax.set_yticks(range(len(videos)), [v for v, _, _ in videos])
    ax.set_xlabel("frame")
    ax.set_title("Ground-truth moments (grey = background)")
    ax.grid(False, axis="y")
    if groups:
        ax.legend(handles=[Patch(color=color_of[g], label=g) for g in groups], title=group_title or None,
                  fontsize=MIN_FONT, bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- 02 training


def training_curves(epochs: Sequence[int], losses: Mapping[str, Sequence[float]],
                    val_sumr: Optional[Sequence[float]] = None, best_epoch: Optional[int] = None,
                    lr: Optional[Sequence[float]] = None, hard_start: Optional[int] = None,
                    val_chance: Optional[float] = None) -> Figure:
    """Loss parts per epoch (log scale when all positive), validation SumR, and the learning rate.

    The legend sits below the loss panel so that it covers no curve; ``hard_start`` draws a dotted line
    where hard negatives start (the triplet terms jump there); the learning rate gets its own panel
    with a scientific-notation axis (its values are around 1e-4, which a table rounds to 0.0).
    A ``total`` entry of ``losses`` is drawn as a thick black line; ``val_chance`` (the SumR of a random
    ranking of the validation videos) as a horizontal line in the SumR panel.
    """
    ncols = 1 + (val_sumr is not None) + (lr is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(min(DISPLAY_WIDTH_IN, 3.0 * ncols + 1.0), 4.6), squeeze=False,
                             layout="constrained")
    axes = list(axes[0])
    ax = axes[0]
    parts = {k: v for k, v in losses.items() if k != "total"}
    for (name, values), color in zip(parts.items(), _colors(len(parts))):
        ax.plot(epochs, values, marker="o", ms=3, label=name, color=color)
    if "total" in losses:
        ax.plot(epochs, losses["total"], marker="o", ms=3, lw=2.5, color="black", label="total")
    all_vals = np.concatenate([np.asarray(v, dtype=float) for v in losses.values()]) if losses else np.array([])
    if all_vals.size and np.all(all_vals > 0):
        ax.set_yscale("log")
    ax.set_ylabel("loss (weighted, epoch mean)")
    ax.set_title("Training loss parts")
    ax.legend(fontsize=MIN_FONT, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    panels = [ax]
    if val_sumr is not None:
        ax = axes[len(panels)]
        ax.plot(epochs[: len(val_sumr)], val_sumr, marker="o", ms=3, color="C2")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", ls="--", lw=1, label=f"best (epoch {best_epoch})")
        if val_chance is not None:
            ax.axhline(val_chance, color="C3", ls="-.", lw=1.2, label=f"random ranking ({val_chance:.1f})")
            ax.set_ylim(bottom=0)
        ax.set_ylabel("SumR")
        ax.set_title("Validation SumR (fused)")
        panels.append(ax)
    if lr is not None:
        ax = axes[len(panels)]
        ax.plot(epochs[: len(lr)], lr, marker="o", ms=3, color="C4")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.set_ylabel("learning rate (end of epoch)")
        ax.set_title("Learning rate")
        panels.append(ax)
    for ax in panels:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if hard_start is not None and len(epochs) and min(epochs) <= hard_start <= max(epochs):
            ax.axvline(hard_start, color="0.3", ls=":", lw=1.2, label=f"hard negatives from epoch {hard_start}")
    for ax in panels[1:]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=MIN_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return fig


def terms_against_references(epochs: Sequence[int], values: Mapping[str, Sequence[float]],
                              references: Mapping[str, tuple[float, str]], title: str = "") -> Figure:
    """One panel per term: its per-epoch values and a dashed horizontal line at its reference value
    (``references``: name -> (value, label), e.g. L_PM's uniform guess log(B K))."""
    names = list(values)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(min(DISPLAY_WIDTH_IN, 4.4 * max(len(names), 1)), 3.8),
                             squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names):
        ax.plot(epochs[: len(values[name])], values[name], marker="o", ms=3, color="C0", label=name)
        if name in references:
            ref, label = references[name]
            ax.axhline(ref, color="C3", ls="--", lw=1.2, label=f"{label} ({ref:.3g})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("unweighted epoch mean")
        ax.set_title(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=MIN_FONT, loc="best")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- 03 evaluation


def grouped_bars(table: Mapping[str, Mapping[str, float]], title: str, ylabel: str = "%") -> Figure:
    """Bars of metrics (inner keys, on the x axis) for each row (outer key: score kind or run), labelled with values.

    The legend sits to the right of the axes, where it covers no bar.
    """
    rows = list(table)
    metrics = list(dict.fromkeys(k for r in rows for k in table[r]))
    width = min(DISPLAY_WIDTH_IN - 2.0, max(5.0, 1.5 + 0.4 * len(metrics) * max(1, len(rows))))
    fig, ax = plt.subplots(figsize=(width, 3.8),
                           layout="constrained")
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(metrics))
    for i, (row, color) in enumerate(zip(rows, _colors(len(rows)))):
        vals = [float(table[row].get(m, np.nan)) for m in metrics]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, vals, width, label=row, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=MIN_FONT)
    ax.set_xticks(x, metrics)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def rank_histogram(labels: Sequence[str], counts: Mapping[str, np.ndarray], chance: Optional[np.ndarray] = None,
                   xlabel: str = "rank") -> Figure:
    """Share of queries per rank bin (from :func:`ralbook.analysis.rank_histogram`), one colour per score kind.

    ``chance`` (% per bin, :func:`ralbook.analysis.chance_bin_shares`) is drawn as a black step line:
    what a random ranking would give.
    """
    table = {kind: {lab: 100.0 * c / max(np.sum(cnt), 1) for lab, c in zip(labels, cnt)}
             for kind, cnt in counts.items()}
    fig = grouped_bars(table, "Rank of the ground-truth video", ylabel="% of queries")
    ax = fig.axes[0]
    if chance is not None:
        x = np.arange(len(labels))
        ax.hlines(chance, x - 0.45, x + 0.45, color="black", ls="--", lw=1.2, label="random ranking")
        ax.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel(xlabel)
    return fig


# ----------------------------------------------------------------------------- 04 uncertainty


def sigma_histograms(groups: Mapping[str, np.ndarray], xlabel: str = "sigma (geometric mean over dims)") -> Figure:
    """Overlaid density histograms of sigma for several groups (videos, support sets, single queries)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (name, values), color in zip(groups.items(), _colors(len(groups))):
        sns.histplot(np.asarray(values, dtype=float), ax=ax, label=f"{name} (n={len(values)})", color=color,
                     stat="density", element="step", alpha=0.3, common_norm=False)
    ax.set_xlabel(xlabel)
    ax.set_title("Learned uncertainty")
    ax.legend(fontsize=MIN_FONT)
    fig.tight_layout()
    return fig


def values_by_group(values: np.ndarray, groups: Sequence, order: Optional[Sequence] = None,
                    xlabel: str = "group", ylabel: str = "sigma", title: str = "") -> Figure:
    """Box plot with the points overlaid: e.g. query sigma per ground-truth ambiguity level."""
    values = np.asarray(values, dtype=float)
    groups = np.asarray(groups)
    order = list(order) if order is not None else sorted(set(groups.tolist()))
    fig, ax = plt.subplots(figsize=(min(DISPLAY_WIDTH_IN, 1.5 + 1.3 * len(order)), 3.8))
    data = [values[groups == g] for g in order]
    ax.boxplot(data, positions=range(len(order)), widths=0.5, showfliers=False, patch_artist=True,
               boxprops={"facecolor": "0.88"}, medianprops={"color": "black"})
    rng = np.random.default_rng(0)
    for i, (v, color) in enumerate(zip(data, _colors(len(order)))):
        ax.scatter(i + rng.uniform(-0.22, 0.22, size=v.size), v, s=7, alpha=0.5, color=color, linewidths=0)
    counts = {g: int((groups == g).sum()) for g in order}
    ax.set_xticks(range(len(order)), [f"{g}\n(n={counts[g]})" for g in order])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def scatter_with_means(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str = "",
                       binned: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> Figure:
    """Jittered scatter of y against an integer-ish x, with per-x means and standard errors on top."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, size=x.shape)
    ax.scatter(x + jitter, y, s=6, alpha=0.35, color="C0", label="query")
    if binned is not None:
        keys, means, sems = binned
        ax.errorbar(keys, means, yerr=sems, color="C3", marker="o", ms=4, lw=1.5, capsize=2, label="mean ± s.e.")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=MIN_FONT)
    fig.tight_layout()
    return fig


def projection_plot(means: np.ndarray, mean_owner: Sequence[int], mean_kind: Sequence[str],
                    proxies: np.ndarray, proxy_owner: Sequence[int], proxy_kind: Sequence[str],
                    owner_names: Sequence[str], explained: Optional[Sequence[float]] = None) -> Figure:
    """2-D projection: colour = owner (video), marker = kind ('video' / 'query'); large = mean, small = proxy."""
    markers = {"video": "s", "query": "o", "support set": "D"}
    colors = distinct_colors(len(owner_names))
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    proxies = np.asarray(proxies)
    means = np.asarray(means)
    for xy, owner, kind in zip(proxies, proxy_owner, proxy_kind):
        ax.scatter(*xy, s=10, alpha=0.35, color=colors[owner], marker=markers.get(kind, "x"), linewidths=0)
    for xy, owner, kind in zip(means, mean_owner, mean_kind):
        ax.scatter(*xy, s=70, color=colors[owner], marker=markers.get(kind, "x"), edgecolors="black", linewidths=0.8)
    handles = [Patch(color=c, label=n) for c, n in zip(colors, owner_names)]
    handles += [plt.Line2D([], [], ls="", marker=m, color="0.3", label=f"{k} mean (small: proxies)")
                for k, m in markers.items() if k in set(mean_kind) | set(proxy_kind)]
    ax.legend(handles=handles, fontsize=MIN_FONT, bbox_to_anchor=(1.01, 1), loc="upper left")
    if explained is not None and len(explained) >= 2:
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% var.)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}% var.)")
    ax.set_title("Means and sampled proxies (PCA)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- 05 word confidence


def word_confidence_heatmaps(queries: Sequence[tuple[str, Sequence[str], np.ndarray]],
                             fillers: frozenset[str] | set[str] = frozenset(),
                             vmax: Optional[float] = None) -> Figure:
    """One strip per query (title, words, confidences g): the words on the x axis, filler words in grey italics.

    The colour is the *relative* confidence g x (number of words): 1 is a uniform share, so the diverging
    scale is centred there (blue: less than its share, red: more). ``vmax`` caps the scale's top (relative).
    Values are written in the cells where they fit; titles wrap on spaces.
    """
    n = len(queries)
    width = DISPLAY_WIDTH_IN - 0.2
    fig, axes = plt.subplots(n, 1, figsize=(width, 1.9 * n + 0.4), squeeze=False, layout="constrained")
    rel = [np.asarray(c, dtype=float)[: len(w)] * max(len(w), 1) for _, w, c in queries]
    top = vmax if vmax is not None else max((float(np.max(r)) for r in rel if r.size), default=2.0)
    top = max(top, 1.0 + 1e-6)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=top)
    image = None
    for ax, (title, words, _), values in zip(axes[:, 0], queries, rel):
        image = ax.imshow(values[None, :], aspect="auto", cmap="RdBu_r", norm=norm)
        cell_in = 0.85 * width / max(len(words), 1)
        if cell_in * 72 >= 0.55 * MIN_FONT * 3.2:  # "1.3" fits the cell
            for t, value in enumerate(values):
                ax.text(t, 0, f"{value:.1f}", ha="center", va="center", fontsize=MIN_FONT,
                        color="white" if abs(norm(value) - 0.5) > 0.3 else "black")
        ax.set_xticks(range(len(words)), words, rotation=40 if len(words) < 16 else 90, ha="right"
                      if len(words) < 16 else "center", fontsize=MIN_FONT)
        for label, word in zip(ax.get_xticklabels(), words):
            if word.lower() in fillers:
                label.set_color("0.45")
                label.set_style("italic")
        ax.set_yticks([])
        ax.set_title(wrap_label(title, _chars_for(width)), fontsize=MIN_FONT, loc="left")
        ax.grid(False)
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.03, pad=0.01, aspect=30,
                     label="relative confidence\n(1 = uniform share)")
    return fig


def word_frame_heatmap(similarity: np.ndarray, words: Sequence[str], span: Optional[tuple[float, float]] = None,
                       confidence: Optional[np.ndarray] = None, title: str = "") -> Figure:
    """Cosine of each word token (rows) with each frame token (columns); ground-truth moment outlined.

    Each row's best frame is marked with a dot (the max that enters the frame score); when
    ``confidence`` is given it is written next to the word. Cosines of both signs get a diverging scale
    centred at 0; all-positive ones a sequential scale.
    """
    sim = np.asarray(similarity, dtype=float)
    fig, ax = plt.subplots(figsize=(DISPLAY_WIDTH_IN - 0.2, 0.4 * len(words) + 2.2), layout="constrained")
    signed = bool(np.nanmin(sim) < 0 < np.nanmax(sim))
    marks = "black" if signed else "cyan"  # visible on the white middle of the diverging scale, on magma's dark
    if signed:  # signed cosines: white at 0 (orthogonal), red similar, blue opposite
        reach = float(np.nanmax(np.abs(sim)))
        image = ax.imshow(sim, aspect="auto", cmap="RdBu_r", interpolation="nearest", vmin=-reach, vmax=reach)
    else:
        image = ax.imshow(sim, aspect="auto", cmap="magma", interpolation="nearest")
    best = sim.argmax(axis=1)
    ax.scatter(best, np.arange(len(words)), s=14, color=marks, marker="o", label="best frame per word")
    labels = list(words) if confidence is None else [f"{w} ({c:.2f})" for w, c in zip(words, confidence)]
    ax.set_yticks(range(len(words)), labels, fontsize=MIN_FONT)
    ax.set_xlabel("frame row (after binning)")
    if span is not None:
        start, end = span
        ax.axvspan(start - 0.5, end - 0.5, facecolor="none", edgecolor="lime" if not signed else "black", lw=2,
                   label="ground-truth moment")
    ax.legend(fontsize=MIN_FONT, loc="upper right", bbox_to_anchor=(1.0, -0.08 - 1.2 / (len(words) + 5)), ncol=2,
              frameon=False)
    ax.set_title(wrap_label(title, _chars_for(DISPLAY_WIDTH_IN - 1.0)), fontsize=MIN_FONT, loc="left")
    ax.grid(False)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="cosine")
    return fig


def two_group_distributions(groups: Mapping[str, np.ndarray], xlabel: str, title: str = "",
                            reference: Optional[float] = None) -> Figure:
    """Overlaid histograms of two (or more) groups, e.g. relative confidence of filler vs content words.

    The legend sits to the right of the axes, where it covers no histogram.
    """
    fig, ax = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    for (name, values), color in zip(groups.items(), _colors(len(groups))):
        v = np.asarray(values, dtype=float)
        sns.histplot(v, ax=ax, label=f"{name} (n={v.size}, median {np.median(v):.2f})" if v.size else name,
                     color=color, stat="density", element="step", alpha=0.3, common_norm=False)
    if reference is not None:
        ax.axvline(reference, color="0.3", ls="--", lw=1, label=f"uniform = {reference:g}")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ----------------------------------------------------------------------------- explorers


def query_explorer(options: Mapping[str, object] | Sequence[str], render, description: str = "query") -> object:
    """An ipywidgets dropdown that calls ``render(value)`` for the chosen option (JupyterLab only).

    ``options`` maps labels to values (or is a list of values). Returns the widget box after
    displaying it; notebooks call this only when ``interactive=True`` so papermill never waits on it.
    """
    import ipywidgets as widgets
    from IPython.display import display

    items = list(options.items()) if isinstance(options, Mapping) else [(str(o), o) for o in options]
    dropdown = widgets.Dropdown(options=items, description=description, layout=widgets.Layout(width="90%"))
    out = widgets.interactive_output(lambda value: (render(value), plt.show()), {"value": dropdown})
    box = widgets.VBox([dropdown, out])
    display(box)
    return box


# ----------------------------------------------------------------------------- 03 fusion and the frame branch


def fusion_sweep(alphas: Sequence[float], values: Sequence[float], low: Sequence[float], high: Sequence[float],
                 model_alpha: float, metric: str = "SumR", level: float = 0.95) -> Figure:
    """The fused metric per fusion weight; each bar is the paired interval of its difference to the configured weight.

    ``low``/``high`` bound the difference (this weight minus the configured one). The bar is drawn at
    ``reference + [low, high]``, so a bar that crosses the dotted line (the configured weight's value) is a
    difference the data cannot tell from 0.
    """
    a, v = np.asarray(alphas, dtype=float), np.asarray(values, dtype=float)
    lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if not a.size or not a.shape == v.shape == lo.shape == hi.shape:
        raise ValueError(f"fusion_sweep: alphas, values, low, high must have one length, got "
                         f"{a.shape}, {v.shape}, {lo.shape}, {hi.shape}")
    reference = float(v[np.argmin(np.abs(a - model_alpha))])
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    below = np.clip(v - (reference + lo), 0, None)
    above = np.clip((reference + hi) - v, 0, None)
    ax.errorbar(a, v, yerr=[below, above], fmt="o-", color=_colors(1)[0], capsize=4, lw=1.5,
                label=f"fused {metric}; bar: {100 * level:g}% CI of the difference to the configured weight")
    ax.axvline(model_alpha, color="0.3", ls="--", lw=1, label=f"configured alpha {model_alpha:g}")
    ax.axhline(reference, color="0.4", ls=":", lw=1.2, label=f"{metric} at the configured alpha")
    ax.set_xlabel("fusion weight alpha (0: frame branch only, 1: clip branch only)", fontsize=11)
    ax.set_ylabel(metric, fontsize=11)
    ax.tick_params(labelsize=10)
    ax.set_title(f"Fused {metric} for each fusion weight", fontsize=12)
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return fig
