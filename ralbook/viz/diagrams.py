"""Teaching figures drawn from the settings and code they explain, so they stay true when either changes.

* :func:`model_diagram`: GMMFormer v2 + RAL as a block diagram (sizes, windows, K, alpha, loss weights
  read from a :class:`~ralbook.config.Config`, the window widths and loss weights from the model code);
* :func:`gaussian_windows_figure`: the Gaussian windows a GMM block multiplies its attention logits by;
* :func:`frame_generation_figure`: how the demo generator makes a frame feature (notebook 01);
* :func:`word_frame_timeline`: a word-by-frame map under the whole video's timeline of moments;
* :func:`write_docs_figures`: the PNG + SVG files that ``docs/method.md`` shows.

Readable on a projector: every figure is at most :data:`~ralbook.viz.plots.DISPLAY_WIDTH_IN` wide (a
notebook's output area, so the browser never shrinks it), every text is at least :data:`MIN_FONT` points
at that size, and labels are placed and wrapped after measuring them. Figures grow downwards (a notebook
scrolls vertically) rather than sideways.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle
from matplotlib.path import Path as MplPath
from matplotlib.text import Text

from ralbook.config import Config, preset
from ralbook.data import demo
from ralbook.errors import ConfigError, DataError
from ralbook.losses import weights
from ralbook.model.gmm import GMM_WIDTHS
from ralbook.model.layers import gaussian_window
from ralbook.viz.plots import DISPLAY_WIDTH_IN, MIN_FONT

BODY = 11.0          # box text, axis labels
TITLE = 12.0         # box titles, figure titles
# every figure's width: with the 0.1 in pad a notebook (bbox "tight") adds on each side it is shown at
# DISPLAY_WIDTH_IN, 1:1, so its font sizes are what one sees (the width plots.py gives full-width figures)
WIDTH_IN = DISPLAY_WIDTH_IN - 0.2
UNIT = 10.0          # model diagram units per inch (1 unit = 0.1 in)

# group -> (legend label, face colour, edge colour); colour-blind safe hues (blue, orange, purple, red)
GROUPS: dict[str, tuple[str, str, str]] = {
    "input": ("inputs (features)", "#ececec", "#555555"),
    "backbone": ("GMMFormer v2 backbone", "#d5e5f4", "#1f5f99"),
    "csa": ("RAL: CSA (frame score)", "#fde2c4", "#b35806"),
    "msra": ("RAL: MSRA (training only)", "#e4dcf1", "#5e3c99"),
    "loss": ("training losses", "#f7d4d4", "#a50f15"),
}
PEAK_COLOURS = {"own": "#39ff14", "other": "#00e5ff", "background": "#ffffff"}  # word-peak markers


# ----------------------------------------------------------------------------- measuring text


def _renderer(fig: Figure):
    """The figure's renderer (Agg on every backend this package uses), for measuring text before drawing."""
    canvas = fig.canvas
    if not hasattr(canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        canvas = FigureCanvasAgg(fig)
    return canvas.get_renderer()


def _text_size_in(fig: Figure, text: str, fontsize: float, **kwargs) -> tuple[float, float]:
    """(width, height) in inches that ``text`` takes at ``fontsize``, measured by drawing it off-screen."""
    probe = fig.text(0, 0, text, fontsize=fontsize, **kwargs)
    box = probe.get_window_extent(_renderer(fig))
    probe.remove()
    return box.width / fig.dpi, box.height / fig.dpi


def _wrap_measured(fig: Figure, parts: Sequence[str], width_in: float, fontsize: float, sep: str = "   ",
                   **kwargs) -> list[str]:
    """Greedy lines of ``parts`` joined by ``sep``, each measured to fit ``width_in`` inches (a part never splits)."""
    lines: list[str] = []
    for part in parts:
        if lines and _text_size_in(fig, lines[-1] + sep + part, fontsize, **kwargs)[0] <= width_in:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return lines


_GLUE = {"=", "+", "·", "−", "→", "×", "↔", "≈"}  # an operator stays on the line of both its operands


def _phrases(text: str) -> list[str]:
    """``text`` split at spaces, except around an operator: "a = 0.5" or "2 · scene" never breaks."""
    parts: list[str] = []
    glue_next = False
    for token in text.split(" "):
        if parts and (glue_next or token in _GLUE):
            parts[-1] += " " + token
        else:
            parts.append(token)
        glue_next = token in _GLUE
    return parts


def _wrap_text(fig: Figure, text: str, width_in: float, fontsize: float, indent: str = "", **kwargs) -> list[str]:
    """``text`` wrapped at spaces into lines measured to fit ``width_in``; continuation lines get ``indent``."""
    lines = _wrap_measured(fig, _phrases(text), width_in, fontsize, sep=" ", **kwargs)
    if indent and len(lines) > 1:
        narrower = width_in - _text_size_in(fig, indent, fontsize, **kwargs)[0]
        rest = _wrap_measured(fig, _phrases(" ".join(lines[1:])), narrower, fontsize, sep=" ", **kwargs)
        lines = lines[:1] + [indent + line for line in rest]
    return lines


def figure_text_digest(fig: Figure) -> str:
    """sha256 of every visible text of ``fig`` (sorted): says whether two drawings say the same things."""
    texts = sorted(t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip())
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


# ----------------------------------------------------------------------------- boxes and arrows


@dataclass(frozen=True)
class _Box:
    """A drawn box's extent in diagram units."""

    left: float
    right: float
    bottom: float
    top: float

    @property
    def cx(self) -> float:
        return (self.left + self.right) / 2

    @property
    def cy(self) -> float:
        return (self.bottom + self.top) / 2

    def port(self, side: str, frac: float = 0.5) -> tuple[float, float]:
        """A point on one side ('l', 'r', 't', 'b'); ``frac`` runs bottom->top or left->right."""
        if side in "lr":
            return (self.left if side == "l" else self.right, self.bottom + frac * (self.top - self.bottom))
        return (self.left + frac * (self.right - self.left), self.top if side == "t" else self.bottom)


@dataclass(frozen=True)
class _Spec:
    """What one box says: its id stem (``gid`` "box-<name>"), bold title, body lines and colour group."""

    name: str
    title: str
    body: str
    group: str
    align: str = "center"


BOX_PAD = 1.0   # diagram units between a box's text and its edge
TEXT_GAP = 0.6  # diagram units between a box's title and its body


def _box_size(fig: Figure, spec: _Spec) -> tuple[float, float]:
    """(width, height) in diagram units the box of ``spec`` needs: its measured text plus padding."""
    w, h = _text_size_in(fig, spec.title, TITLE, weight="bold")
    if spec.body:
        bw, bh = _text_size_in(fig, spec.body, BODY, linespacing=1.35, multialignment=spec.align)
        w, h = max(w, bw), h + bh + TEXT_GAP / UNIT
    return w * UNIT + 2 * BOX_PAD, h * UNIT + 2 * BOX_PAD


def _draw_box(ax, spec: _Spec, cx: float, cy: float, width: float = 0.0, height: float = 0.0,
              extra: float = 0.0) -> _Box:
    """A rounded box centred at (cx, cy), at least ``width`` x ``height`` and sized to its measured text (so
    the label always fits; the text is centred in a taller box), with ``extra`` empty units under the text
    (room for small plots)."""
    renderer = _renderer(ax.figure)
    to_data = ax.transData.inverted()
    title_t = ax.text(cx, 0, spec.title, ha="center", va="top", fontsize=TITLE, weight="bold", zorder=3,
                      gid=f"box-{spec.name}-title")
    body_t = ax.text(cx, 0, spec.body, ha="center", va="top", fontsize=BODY, linespacing=1.35, zorder=3,
                     multialignment=spec.align, gid=f"box-{spec.name}-body") if spec.body else None
    sizes = []
    for t in (title_t, body_t):
        if t is not None:
            ext = t.get_window_extent(renderer).transformed(to_data)
            sizes.append((ext.width, ext.height))
    text_h = sum(h for _, h in sizes) + TEXT_GAP * (len(sizes) - 1)
    half_w = max(max(w for w, _ in sizes) / 2 + BOX_PAD, width / 2)
    half_h = max(text_h / 2 + extra / 2 + BOX_PAD, height / 2)
    top = cy + half_h - BOX_PAD - (2 * half_h - 2 * BOX_PAD - text_h - extra) / 2
    title_t.set_y(top)
    if body_t is not None:
        body_t.set_y(top - sizes[0][1] - TEXT_GAP)
    _, face, edge = GROUPS[spec.group]
    box = _Box(cx - half_w, cx + half_w, cy - half_h, cy + half_h)
    ax.add_patch(FancyBboxPatch((box.left, box.bottom), box.right - box.left, box.top - box.bottom,
                                boxstyle="round,pad=0,rounding_size=1.2", facecolor=face, edgecolor=edge,
                                linewidth=1.6, zorder=2, gid=f"box-{spec.name}"))
    return box


def _route(ax, points: Sequence[tuple[float, float]], colour: str) -> None:
    """An arrow along the straight segments through ``points`` (diagram units), its head at the last point."""
    path = MplPath(points, [MplPath.MOVETO] + [MplPath.LINETO] * (len(points) - 1))
    ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=16, linewidth=1.7, color=colour,
                                 zorder=1, shrinkA=0, shrinkB=0))


def _down(ax, a: _Box, b: _Box, colour: str, x: Optional[float] = None) -> None:
    """A straight arrow from the bottom of ``a`` to the top of ``b`` below it (at ``x``, default a's centre)."""
    x = a.cx if x is None else x
    _route(ax, [(x, a.bottom), (x, b.top)], colour)


# ----------------------------------------------------------------------------- 1. model diagram


def _fmt(value: float) -> str:
    """A setting as written in the presets: 0.5, 8e-05, 0.00025, 1."""
    return f"{value:g}"


def _window_widths() -> tuple[Optional[float], ...]:
    """The GMM block's branch widths, read from the model code (None = no window)."""
    return GMM_WIDTHS


def _window_row(length: int, width: Optional[float], row: int) -> np.ndarray:
    """Row ``row`` of the window the model builds for a block of ``length`` positions (ones: no window)."""
    if width is None:
        return np.ones(length)
    return gaussian_window(length, width)[row].double().numpy()


def _loss_lines(cfg: Config) -> list[str]:
    """The weighted terms of the training objective the config trains with, one per line."""
    w = weights(cfg.loss)
    lines = [f"{_fmt(w['clip_nce'])} · NCE on $S_c$", f"{_fmt(w['frame_nce'])} · NCE on $S_f$",
             f"{_fmt(w['clip_triplet'])} · triplet on $S_c$", f"{_fmt(w['frame_triplet'])} · triplet on $S_f$",
             f"     (margin {_fmt(cfg.loss.margin)})",
             f"{_fmt(w['query_diversity'])} · diversity of $q$",
             f"{_fmt(w['optimal_transport'])} · OT: $q$ ↔ clips"]
    if cfg.model.msra:
        lines += [f"{_fmt(w['proxy_matching'])} · $L_{{PM}}$ (proxies)",
                  f"{_fmt(w['distribution_alignment'])} · $L_{{DA}}$ (Gaussians)"]
    return lines


def _model_specs(cfg: Config) -> dict[str, _Spec]:
    """Every box of the model diagram, keyed by name, with short lines (a box is at most ~2.5 in wide)."""
    m = cfg.model
    linear = f"Linear {m.visual_dim}→{m.hidden_size}\n+ positions"
    specs = [
        _Spec("video", "Video", f"frame features   $L_f$ × $D_v$ = {m.max_frames} × {m.visual_dim}", "input"),
        _Spec("query", "Query", f"word features\n$L_q$ × $D_t$ = {m.max_desc_len} × {m.text_dim}", "input"),
        _Spec("frame-branch", "Frame branch", f"≤ {m.max_frames} frame rows\n(padded)\n{linear}", "backbone"),
        _Spec("clip-branch", "Clip branch", f"bin the frames into\n{m.n_clips} uniform clips\n{linear}", "backbone"),
        _Spec("query-encoder", "Query encoder",
              f"Linear {m.text_dim}→{m.hidden_size}\n+ positions\n1 transformer layer\n({m.n_heads} heads)\n"
              f"attention pool → $q$", "backbone"),
        _Spec("gmm-frame", f"GMM block, L = {m.max_frames}", f"→ frame tokens $f$\n($d$ = {m.hidden_size})",
              "backbone"),
        _Spec("gmm-clip", f"GMM block, L = {m.n_clips}", f"→ {m.n_clips} clip tokens\n($d$ = {m.hidden_size})",
              "backbone"),
        _Spec("clip-score", "Clip score $S_c$", f"max over the {m.n_clips}\nclips of cos($q$, clip)", "backbone"),
        _Spec("fusion", "Ranking score", f"$S$ = α·$S_c$ + (1 − α)·$S_f$\nα = {_fmt(m.alpha)}", "backbone"),
        _Spec("losses", "Training losses", "\n".join(_loss_lines(cfg)), "loss", align="left"),
    ]
    if m.csa:
        weighting = ("word confidence $g_t$ = softmax$_t$ MLP($w_t$)" if m.word_confidence
                     else "uniform word weights $g_t$ = 1 / (number of words)")
        specs.append(_Spec("frame-score", "CSA frame score $S_f$",
                           f"{weighting}\n$S_f$ = Σ$_t$ $g_t$ · max$_f$ cos($w_t$, $f$)", "csa"))
    else:
        specs.append(_Spec("frame-score", "Frame score $S_f$", "max over frames of cos($q$, $f$)", "backbone"))
    if m.csa or m.msra:
        specs.append(_Spec("word-encoder", "CSA word encoder" if m.csa else "Word encoder\n(MSRA)",
                           f"own Linear {m.text_dim}→{m.hidden_size};\nshared positions;\n"
                           f"1 transformer layer\n→ word tokens $w_t$", "csa" if m.csa else "msra"))
    if m.msra:
        specs.append(_Spec("msra", "MSRA", f"Gaussian of each video's\nframes and of its\nqueries' words: mean μ,\n"
                                           f"std. deviation σ;\nK = {m.n_proxies} proxies\nz = μ + ε·σ\n"
                                           f"→ $L_{{PM}}$, $L_{{DA}}$", "msra"))
    return {s.name: s for s in specs}


def model_diagram(cfg: Config) -> Figure:
    """Block diagram of GMMFormer v2 + RAL with the sizes and weights of ``cfg``, top to bottom.

    Why generated: a hand-drawn picture goes stale when a preset or the model changes; this one reads
    the feature sizes, clip and frame lengths, hidden size, K, alpha, sft_factor and loss weights from
    ``cfg``, the window widths from ``ralbook.model.gmm``, and follows the RAL switches (``model.csa``,
    ``model.word_confidence``, ``model.msra``). Colours group the backbone, RAL's parts and the losses.

    Layout (no arrow crosses another): three columns under the video, the frame stream on the left,
    the query's text stream in the middle, the clip stream on the right; the frame score spans the
    left two columns, the ranking score sits under the clip score; the legend and the losses, then
    the inside of a GMM block (its branches' windows), close the figure.
    """
    m = cfg.model
    if m.backbone != "gmmformer_v2":
        raise ConfigError(f"model.backbone={m.backbone!r}: the diagram draws GMMFormer v2 + RAL; "
                          "set model.backbone=gmmformer_v2")
    widths = _window_widths()
    fig = plt.figure(figsize=(WIDTH_IN, 12.0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    specs = _model_specs(cfg)
    size = {name: _box_size(fig, spec) for name, spec in specs.items()}
    W = WIDTH_IN * UNIT
    margin_l = margin_r = 3.6  # the left margin carries the frame tokens past MSRA
    row_gap = 4.5

    # columns: 0 frame stream, 1 text stream, 2 clip stream; all as wide as the widest box in any
    columns = {0: ["frame-branch", "gmm-frame", "msra"], 1: ["query", "query-encoder", "word-encoder"],
               2: ["clip-branch", "gmm-clip", "clip-score", "fusion"]}
    widest_box = max(size[n][0] for names in columns.values() for n in names if n in specs)
    col_w = {c: widest_box for c in columns}
    gap = (W - margin_l - margin_r - sum(col_w.values())) / 2
    if gap < 3.0 or size["frame-score"][0] > col_w[0] + gap + col_w[1]:
        widest = max(specs, key=lambda n: size[n][0])
        raise ConfigError(f"model diagram: the boxes do not fit {WIDTH_IN} in (the widest, {widest!r}, needs "
                          f"{size[widest][0] / UNIT:.1f} in); shorten the values of {cfg.name!r}")
    left = {0: margin_l, 1: margin_l + col_w[0] + gap, 2: margin_l + col_w[0] + col_w[1] + 2 * gap}
    span01 = (left[0], left[1] + col_w[1])  # the frame score merges the frame and text streams
    place = {n: ((left[c] + col_w[c] / 2), col_w[c]) for c, names in columns.items() for n in names}
    place["video"] = ((margin_l + W - margin_r) / 2, W - margin_l - margin_r)
    place["frame-score"] = ((span01[0] + span01[1]) / 2, span01[1] - span01[0])
    rows = [["video"], ["frame-branch", "query", "clip-branch"], ["gmm-frame", "query-encoder", "gmm-clip"],
            ["msra", "word-encoder", "clip-score"], ["frame-score", "fusion"]]
    rows = [[n for n in row if n in specs] for row in rows]

    drawn = {"input", "backbone", "loss"} | ({"csa"} if m.csa else set()) | ({"msra"} if m.msra else set())
    legend = ax.legend(handles=[Patch(facecolor=f, edgecolor=e, label=label)
                                for g, (label, f, e) in GROUPS.items() if g in drawn],
                       loc="upper left", fontsize=BODY, frameon=False, borderaxespad=0, borderpad=0)
    legend_h = legend.get_window_extent(_renderer(fig)).height / fig.dpi * UNIT
    text_w = (W - margin_l - margin_r - 2 * BOX_PAD) / UNIT  # inches of text in a full-width box
    detail_title = f"Inside each GMM block (L = {m.n_clips} and L = {m.max_frames}): {len(widths)} branches"
    detail_body = (f"Branch k multiplies its attention logits by a Gaussian window of width $w_k$ (below: the "
                   f"window of the middle position). A softmax over the branches (temperature sft_factor = "
                   f"{_fmt(m.sft_factor)}) mixes them at every position, with weights computed from a learned "
                   f"token that summarises each branch.")
    detail = _Spec("gmm-detail", "\n".join(_wrap_text(fig, detail_title, text_w, TITLE, weight="bold")),
                   "\n".join(_wrap_text(fig, detail_body, text_w, BODY)), "backbone", align="left")
    glyph_h = 11.0  # glyph plot + its label, inside the detail box

    # rows from the top (y grows downwards here; flip() turns it into drawing units)
    y = 0.8
    row_cy, row_h = [], []
    for row in rows:
        h = max(size[n][1] for n in row)
        row_cy.append(y + h / 2)
        row_h.append(h)
        y += h + row_gap
    y -= row_gap - 3.0
    bottom_row_top = y
    y += max(legend_h, size["losses"][1]) + 3.0
    detail_top = y
    detail_h = _box_size(fig, detail)[1] + glyph_h
    H = y + detail_h + 0.6
    fig.set_size_inches(WIDTH_IN, H / UNIT)
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)

    def flip(v: float) -> float:  # layout y (down from the top) -> drawing y (up from the bottom)
        return H - v

    box: dict[str, _Box] = {}
    for row, cy, h in zip(rows, row_cy, row_h):
        for n in row:
            cx, w = place[n]
            box[n] = _draw_box(ax, specs[n], cx, flip(cy), width=w, height=h)
    losses_h = size["losses"][1]
    losses_w = max(size["losses"][0], col_w[2])  # right-aligned with the clip column
    box["losses"] = _draw_box(ax, specs["losses"], W - margin_r - losses_w / 2, flip(bottom_row_top + losses_h / 2),
                              width=losses_w)
    legend.set_bbox_to_anchor((margin_l / W, flip(bottom_row_top) / H), transform=ax.transAxes)
    band = _draw_box(ax, detail, W / 2, flip(detail_top + detail_h / 2), width=W - margin_l - margin_r,
                     extra=glyph_h)
    _window_glyphs(fig, ax, widths, m.max_frames, left=band.left + 2.0, right=band.right - 2.0,
                   bottom=band.bottom + 1.0, top=band.bottom + glyph_h + 0.4)

    # arrows: inputs and streams straight down; merges along the gaps between columns (none crosses another)
    video_c, query_c, fused_c = GROUPS["backbone"][2], GROUPS["input"][2], "#333333"
    word_c = GROUPS["csa" if m.csa else "msra"][2]
    b = box
    gap_l = (b["frame-branch"].right + b["query"].left) / 2   # between the frame and text columns
    gap_r = (b["query"].right + b["clip-branch"].left) / 2    # between the text and clip columns
    _down(ax, b["video"], b["frame-branch"], video_c, b["frame-branch"].cx)
    _down(ax, b["video"], b["clip-branch"], video_c, b["clip-branch"].cx)
    _down(ax, b["frame-branch"], b["gmm-frame"], video_c)
    _down(ax, b["clip-branch"], b["gmm-clip"], video_c)
    _down(ax, b["gmm-clip"], b["clip-score"], video_c)
    _down(ax, b["query"], b["query-encoder"], query_c)
    _down(ax, b["clip-score"], b["fusion"], fused_c)
    _route(ax, [b["frame-score"].port("r"), (b["fusion"].left, b["frame-score"].cy)], fused_c)
    y_q = b["query-encoder"].port("r", 0.6)[1]
    _route(ax, [(b["query-encoder"].right, y_q), (gap_r + 0.6, y_q), (gap_r + 0.6, b["clip-score"].cy),
                b["clip-score"].port("l")], query_c)
    if "msra" in b:  # the frame tokens go down to MSRA and, along the left margin, to the frame score
        _down(ax, b["gmm-frame"], b["msra"], video_c)
        _route(ax, [b["gmm-frame"].port("l"), (margin_l / 2, b["gmm-frame"].cy), (margin_l / 2, b["frame-score"].cy),
                    b["frame-score"].port("l")], video_c)
    else:
        _down(ax, b["gmm-frame"], b["frame-score"], video_c)
    if "word-encoder" in b:  # the query's words pass the query encoder on its left
        words = b["word-encoder"]
        y_mid = (b["query-encoder"].bottom + words.top) / 2
        x_in = words.left + 0.2 * (words.right - words.left)
        _route(ax, [b["query"].port("l", 0.5), (gap_l, b["query"].cy), (gap_l, y_mid), (x_in, y_mid),
                    (x_in, words.top)], query_c)
        if m.csa:
            _down(ax, words, b["frame-score"], word_c)
        if "msra" in b:
            _route(ax, [words.port("l"), (b["msra"].right, words.cy)], word_c)
    if not m.csa:  # the backbone frame score takes the pooled query
        qenc = b["query-encoder"]
        if "word-encoder" in b:  # down the right gap, past the word encoder
            y_a = qenc.port("r", 0.25)[1]
            y_mid = (b["word-encoder"].bottom + b["frame-score"].top) / 2
            x_in = b["frame-score"].right - 2.0
            _route(ax, [(qenc.right, y_a), (gap_r - 0.6, y_a), (gap_r - 0.6, y_mid), (x_in, y_mid),
                        (x_in, b["frame-score"].top)], query_c)
        else:
            _down(ax, qenc, b["frame-score"], query_c)
    return fig


def _window_glyphs(fig: Figure, ax, widths: Sequence[Optional[float]], length: int, left: float, right: float,
                   bottom: float, top: float) -> None:
    """One small plot per GMM branch, in model order: the window row of the block's middle position."""
    n = len(widths)
    gap = 1.6
    size_w = (right - left - gap * (n - 1)) / n
    label_h = 2.4  # room under each glyph for its width label (diagram units)
    W, H = ax.get_xlim()[1], ax.get_ylim()[1]
    x = np.arange(length)
    for k, width in enumerate(widths):
        x0 = left + k * (size_w + gap)
        gax = fig.add_axes((x0 / W, (bottom + label_h + 0.4) / H, size_w / W, (top - bottom - label_h - 0.4) / H))
        gax.fill_between(x, _window_row(length, width, length // 2), color=GROUPS["backbone"][2], alpha=0.85, lw=0)
        gax.set_xlim(0, length - 1)
        gax.set_ylim(0, 1.05)
        gax.set_xticks([])
        gax.set_yticks([])
        gax.grid(False)
        gax.set_facecolor("white")
        for spine in gax.spines.values():
            spine.set_color("#999999")
        ax.text(x0 + size_w / 2, bottom, "none" if width is None else f"w = {_fmt(width)}",
                ha="center", va="bottom", fontsize=MIN_FONT, zorder=3)


# ----------------------------------------------------------------------------- 2. Gaussian windows


def gaussian_windows_figure(cfg: Config, n_frames: Optional[int] = None, block: str = "frame",
                            centres: Optional[Sequence[int]] = None) -> Figure:
    """The window each branch of a GMM block multiplies its attention logits by, over a video's frames.

    ``block`` "frame" (length ``model.max_frames``) or "clip" (``model.n_clips``). A video with fewer
    valid rows than the block (``n_frames``) sits in the block's first rows, padded, and keeps the
    window of the full length: the figure shows those first ``n_frames`` keys, so it tells how many
    of *this* video's frames each branch sees. One panel per branch, one curve per query position.
    """
    m = cfg.model
    if block not in ("frame", "clip"):
        raise ConfigError(f"block={block!r}: expected 'frame' or 'clip'")
    length = m.max_frames if block == "frame" else m.n_clips
    setting = "model.max_frames" if block == "frame" else "model.n_clips"
    n = length if n_frames is None else int(n_frames)
    if not 2 <= n <= length:
        raise ConfigError(f"n_frames={n_frames}: a {block} GMM block holds 2..{length} rows ({setting} = {length})")
    if centres is None:
        centres = sorted({int(round(f * (n - 1))) for f in (0.1, 0.5, 0.9)})
    bad = [c for c in centres if not 0 <= c < n]
    if bad:
        raise ConfigError(f"centres {bad}: query positions must lie in 0..{n - 1} (n_frames = {n})")
    widths = _window_widths()
    ncols = 2  # two panels a row keep each 4 in wide at the notebook's width; more rows instead
    nrows = int(np.ceil(len(widths) / ncols))
    fig = plt.figure(figsize=(WIDTH_IN, 10.0), layout="constrained")
    video = f"a video of {n} rows" if n < length else f"a full {length}-row video"
    title = [*_wrap_text(fig, f"Gaussian windows of the GMM {block} block (L = {length}), shown over {video}.",
                         WIDTH_IN - 0.3, TITLE),
             *_wrap_text(fig, "A branch multiplies its attention logits by these weights: 1 keeps a key's logit, "
                              "0 sets it to 0 (the key is not masked out).", WIDTH_IN - 0.3, TITLE)]
    fig.set_size_inches(WIDTH_IN, 2.25 * nrows + 0.5 + 0.26 * len(title) + 0.5)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10").colors
    keys = np.arange(n)
    # panels from narrow to wide (plain attention first); titles keep the branch's index in the model
    order = sorted(range(len(widths)), key=lambda k: (widths[k] is not None, widths[k] or 0.0))
    for ax, k in zip(axes.flat, order):
        width = widths[k]
        for c, colour in zip(centres, colours):
            ax.plot(keys, _window_row(length, width, c)[:n], color=colour, lw=2.2, label=f"query position {c}")
            ax.axvline(c, color=colour, lw=1, ls=":")
        if width is None:
            ax.set_title(f"branch {k + 1}: no window (plain attention)", fontsize=BODY)
        else:
            sigma_rows = max(width, 0.01) / 9 * (length - 1)
            ax.set_title(f"branch {k + 1}: w = {_fmt(width)}, σ ≈ {sigma_rows:.3g} rows", fontsize=BODY)
        ax.set_ylim(-0.03, 1.08)
        ax.tick_params(labelsize=MIN_FONT)
    for ax in axes.flat[len(widths):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("key position (frame row)" if block == "frame" else "key position (clip)", fontsize=BODY)
    for ax in axes[:, 0]:
        ax.set_ylabel("window weight", fontsize=BODY)
    fig.suptitle("\n".join(title), fontsize=TITLE, x=0.01, ha="left", linespacing=1.4)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(centres), fontsize=BODY, frameon=False)
    return fig


# ----------------------------------------------------------------------------- 3. demo frame generation


def frame_generation_figure(params=None, n_frames: int = 60, seed: int = 0) -> Figure:
    """How the demo generator makes frame features, with its real parameters and one generated video.

    Calls the generator's own functions (``ralbook.demo``) on a fresh video, so the picture is what
    ``make demo`` does. Top: each frame's projection onto the visual directions of one moment's four
    concepts, over the whole video (moments shaded). Below it: mean projections inside that moment vs
    background frames, with and without the style, drift and noise (the clean part is the same video
    rendered with ``difficulty = 0`` and ``video_style = 0``).
    """

    p = params if params is not None else demo.DemoParams()
    if n_frames < p.min_frames:
        raise ConfigError(f"n_frames={n_frames}: the demo generator makes videos of at least {p.min_frames} frames")
    world = demo.build_world(p)
    rng = np.random.default_rng([p.seed, 9, seed])
    places = world.concepts_of("place")
    home = places[rng.integers(len(places))]
    scene = int(rng.integers(p.n_scenes))
    spans = demo._layout_moments(rng, n_frames, p)
    moments = [demo.MomentTruth(s, e, demo._fresh_concepts(rng, world, home)) for s, e in spans]
    state = rng.bit_generator.state
    frames = demo._render_frames(rng, world, p, n_frames, scene, moments)
    rng.bit_generator.state = state  # same draws, no style/drift/noise
    clean = demo._render_frames(rng, world, dataclasses.replace(p, difficulty=0.0, video_style=0.0), n_frames,
                                scene, moments)
    target = max(range(len(moments)), key=lambda i: moments[i].end - moments[i].start)
    concepts = moments[target].concepts
    directions = {slot: world.visual_map @ world.latent[concepts[slot]] for slot in demo.SLOTS}
    inside = np.zeros(n_frames, dtype=bool)
    inside[moments[target].start:moments[target].end] = True
    background = np.ones(n_frames, dtype=bool)
    for mo in moments:
        background[mo.start:mo.end] = False

    fig = plt.figure(figsize=(WIDTH_IN, 12.0), layout="constrained")
    own = np.sqrt(max(1 - p.family_share ** 2 - p.kind_share ** 2, 0.0))
    sw = p.slot_weights
    recipe = [
        f"Concept vector (unit length, {p.latent_dim} dims) = {_fmt(p.kind_share)}·kind"
        f" + {_fmt(p.family_share)}·family"
        f" + {own:.2f}·own direction: concepts of one family share part of their direction.",
        f"Frame inside a moment = visual map · ({_fmt(p.person_weight)}·person + {_fmt(sw[0])}·envelope·action"
        f" + {_fmt(sw[1])}·object + {_fmt(sw[2])}·colour + {_fmt(sw[3])}·place); the envelope rises from 0.6 to 1"
        f" mid-moment.",
        f"Frame outside every moment = {_fmt(p.background_strength)} · scene direction (orthogonal to every concept"
        f": no caption can match it).",
        f"Every frame then gets + {_fmt(p.video_style)}·video style + {_fmt(p.drift)}·drift"
        f" (AR(1), {_fmt(p.drift_memory)}) + {_fmt(p.frame_noise)}·noise; drift and noise are scaled by"
        f" difficulty = {_fmt(p.difficulty)}.",
    ]
    text_w = WIDTH_IN - 0.25  # the recipe and the key wrap (measured) to the figure's width
    parts = [f"M{k + 1} = {' '.join(mo.concepts[s] for s in demo.SLOTS)}" for k, mo in enumerate(moments)]
    lines = [line for sentence in recipe for line in _wrap_text(fig, sentence, text_w, BODY, indent="    ")]
    lines += _wrap_measured(fig, [f"This video ({n_frames} frames): {parts[0]}", *parts[1:]], text_w, BODY,
                            sep="  ·  ")
    title = "\n".join(_wrap_text(fig, f"How a demo frame feature is made ({p.visual_dim}-d frames, seed {p.seed})",
                                 text_w, TITLE, weight="bold"))
    title_h = _text_size_in(fig, title, TITLE, weight="bold")[1]
    text_h = _text_size_in(fig, "\n".join(lines), BODY, linespacing=1.45)[1]
    top_h = 0.12 + title_h + 0.12 + text_h + 0.12
    height = top_h + 8.0  # two full-width panels stacked, each with its legend under it
    fig.set_size_inches(WIDTH_IN, height)
    fig.text(0.12 / WIDTH_IN, 1 - 0.12 / height, title, ha="left", va="top", fontsize=TITLE, weight="bold")
    fig.text(0.12 / WIDTH_IN, 1 - (0.24 + title_h) / height, "\n".join(lines), ha="left", va="top", fontsize=BODY,
             linespacing=1.45)
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - top_h / height))
    ax_line, ax_bar = fig.subplots(2, 1, height_ratios=[1.0, 0.9])
    colours = plt.get_cmap("tab10").colors
    t = np.arange(n_frames)
    for k, mo in enumerate(moments):
        ax_line.axvspan(mo.start - 0.5, mo.end - 0.5, color="#f2c894" if k == target else "#dddddd", zorder=0)
        ax_line.text((mo.start + mo.end - 1) / 2, 1.0, f"M{k + 1}", transform=ax_line.get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=MIN_FONT)
    for (slot, direction), colour in zip(directions.items(), colours):
        ax_line.plot(t, frames @ direction, color=colour, lw=1.8, label=f"{slot}: {concepts[slot]}")
    ax_line.axhline(0, color="0.4", lw=0.8)
    ax_line.set_xlim(-0.5, n_frames - 0.5)
    ax_line.set_xlabel(f"frame (moment M{target + 1} shaded orange, other moments grey)", fontsize=BODY)
    ax_line.set_ylabel(f"projection on M{target + 1}'s\nconcept directions", fontsize=BODY)
    ax_line.tick_params(labelsize=MIN_FONT)
    ax_line.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=4, frameon=False)
    slots = list(directions)
    y = np.arange(len(slots))
    bars = [(f"inside M{target + 1}, generated", frames, inside, "#b35806"),
            (f"inside M{target + 1}, signal only", clean, inside, "#f2c894"),
            ("background frames, generated", frames, background, "#1f5f99")]
    height = 0.8 / len(bars)
    for i, (label, data, rows, colour) in enumerate(bars):
        if not rows.any():
            continue
        values = [float(np.mean(data[rows] @ directions[s])) for s in slots]
        drawn = ax_bar.barh(y + (i - 1) * height, values, height, label=label, color=colour)
        ax_bar.bar_label(drawn, fmt="%.2f", fontsize=MIN_FONT, padding=3)
    ax_bar.axvline(0, color="0.4", lw=0.8)
    ax_bar.set_yticks(y, [f"{s}\n{concepts[s]}" for s in slots], fontsize=MIN_FONT)
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("mean projection", fontsize=BODY)
    ax_bar.tick_params(labelsize=MIN_FONT)
    ax_bar.margins(x=0.22)
    ax_bar.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=3, frameon=False)
    return fig


# ----------------------------------------------------------------------------- 4. word map under the timeline


def _fit_label(fig: Figure, number: str, label: str, width_in: float, height_in: float,
               weight: str = "normal") -> Optional[list[str]]:
    """The first layout of a moment's label that fits a band of that size, or None (then only its key)."""
    words = label.split()
    candidates = [[f"{number}: {label}"], [number, label], [number, *words], [number]] if label else [[number]]
    for lines in candidates:
        w, h = _text_size_in(fig, "\n".join(lines), MIN_FONT, linespacing=1.15, weight=weight)
        if w <= width_in - 0.06 and h <= height_in - 0.04:
            return lines
    return None


def word_frame_timeline(similarity: np.ndarray, words: Sequence[str], moments: Sequence[tuple[float, float, str]],
                        query_span: tuple[float, float], confidence: Optional[np.ndarray] = None, title: str = "",
                        fillers: Sequence[str] = (), span_name: str = "") -> Figure:
    """A word-by-frame cosine map with the whole video's timeline of moments above it (colour scale below).

    ``moments``: (first_row, end_row, label) per ground-truth moment in frame rows (end exclusive,
    e.g. from ``analysis.frame_span_to_rows``), label = its concepts; ``query_span``: the rows of the
    query's own moment. Each word's best frame (the max that enters the frame score) is marked, and
    the right margin says where it fell: the query's moment, another moment Mk, or background. So a
    content word that finds its best frame in *another* moment sharing a concept is visible at once.
    ``confidence`` (one per word) is labelled relative to a uniform share (g x number of words, as the
    word-confidence strip shows it). ``span_name`` names the outlined span where it is not the query's own
    moment (a typed query has none: e.g. "the moment sharing most concepts").
    """
    sim = np.asarray(similarity, dtype=float)
    if sim.ndim != 2 or sim.shape[0] != len(words) or sim.shape[1] < 1:
        raise DataError(f"similarity must be (n_words, n_frames) with n_words = {len(words)} words; "
                        f"got shape {sim.shape}")
    n_words, n_rows = sim.shape
    q0, q1 = query_span
    if not 0 <= q0 < q1 <= n_rows:
        raise DataError(f"query_span {query_span}: expected 0 <= start < end <= {n_rows} frame rows")
    for k, (s, e, _) in enumerate(moments):
        if not 0 <= s < e <= n_rows:
            raise DataError(f"moment M{k + 1} ({s}, {e}): expected 0 <= start < end <= {n_rows} frame rows")
    conf = None if confidence is None else np.asarray(confidence, dtype=float)
    if conf is not None and conf.shape != (n_words,):
        raise DataError(f"confidence must have one value per word ({n_words}); got shape {conf.shape}")
    overlaps = [max(0.0, min(e, q1) - max(s, q0)) for s, e, _ in moments]
    own = int(np.argmax(overlaps)) if overlaps and max(overlaps) > 0 else None
    best = sim.argmax(axis=1)

    span_label = span_name or "the query's moment"
    own_text = "outlined moment" if span_name else "own moment"

    def where(row: int) -> tuple[str, str]:
        for k, (s, e, _) in enumerate(moments):
            if s <= row < e:
                return ("own", own_text) if k == own else ("other", f"M{k + 1}, other moment")
        if q0 <= row < q1:
            return "own", own_text
        return "background", "background"

    places = [where(int(r)) for r in best]
    fill = {w.lower() for w in fillers}
    relative = None if conf is None else conf * n_words / max(float(conf.sum()), 1e-12)
    word_labels = list(words) if relative is None else [f"{w} ({c:.2f})" for w, c in zip(words, relative)]
    peak_labels = [f"→ frame {r}: {text}" for r, (_, text) in zip(best, places)]

    width = WIDTH_IN
    fig = plt.figure(figsize=(width, 1.0))
    left = max(_text_size_in(fig, s, BODY)[0] for s in word_labels) + 0.55
    right_text = max(_text_size_in(fig, s, MIN_FONT, weight="bold")[0] for s in peak_labels) + 0.15
    axes_w = width - left - right_text - 0.1  # the colour bar lies under the map, so the map gets the rest
    if axes_w < 3.5:
        raise DataError(f"labels too long to draw: {axes_w:.1f} in left for the map "
                        f"(longest word label {max(word_labels, key=len)!r})")
    band_h = 1.05

    def x_in(x: float) -> float:  # frame-row coordinate -> inches from the map's left edge
        return (x + 0.5) / n_rows * axes_w

    # moment labels, measured against the band each one gets; bands too narrow get their number above
    layouts, keys, above = [], [], []
    for k, (s, e, label) in enumerate(moments):
        name = f"M{k + 1}"
        lines = _fit_label(fig, name, label, x_in(e - 0.5) - x_in(s - 0.5), band_h * 0.84,
                           "bold" if k == own else "normal")
        layouts.append(lines)
        if lines is None:
            above.append(k)
        if label and (lines is None or lines == [name]):
            keys.append(f"{name} = {label}" + (f" ({span_label})" if k == own else ""))
    levels: dict[int, int] = {}
    ends: list[float] = []  # right edge (inches) of the last number placed on each level
    for k in above:
        s, e, _ = moments[k]
        centre, half = x_in((s + e - 1) / 2), _text_size_in(fig, f"M{k + 1}", MIN_FONT, weight="bold")[0] / 2 + 0.04
        level = next((i for i, r in enumerate(ends) if centre - half >= r), len(ends))
        if level == len(ends):
            ends.append(0.0)
        ends[level] = centre + half
        levels[k] = level
    numbers_h = 0.2 * len(ends)
    key_lines = _wrap_measured(fig, keys, axes_w + right_text, MIN_FONT) if keys else []
    title_lines = _wrap_measured(fig, title.split(" "), width - 0.4, TITLE, sep=" ") if title else []
    title_h = 0.1 + 0.28 * len(title_lines)
    key_h = 0.22 * len(key_lines) + (0.08 if key_lines else 0)
    map_h = 0.38 * n_words + 0.1
    handles = [Line2D([], [], ls="", marker="o", markersize=9, markerfacecolor=PEAK_COLOURS[k], markeredgecolor="black",
                      label=f"best frame of a word: {text}")
               for k, text in (("own", f"in {span_label}"), ("other", "in another moment"),
                               ("background", "in background"))]
    handles.append(Patch(facecolor="none", edgecolor=PEAK_COLOURS["own"], lw=2.4,
                         label=span_name or "query's own moment"))
    if relative is not None:
        handles.append(Line2D([], [], ls="", label="word (1.2): confidence 1.2 × a uniform share"))
    item_w = max(_text_size_in(fig, h.get_label(), MIN_FONT)[0] for h in handles) + 0.75  # + marker and padding
    ncol = 2 if 0.2 + 2 * item_w <= width else 1
    legend_h = 0.25 * int(np.ceil(len(handles) / ncol)) + 0.1
    cbar_y = legend_h + 0.1 + 0.5   # the colour bar's ticks and label take 0.5 in under it
    bottom_h = cbar_y + 0.14 + 0.62  # the map's tick labels and x label take 0.62 in under it
    time_y = bottom_h + map_h + 0.18
    height = title_h + key_h + numbers_h + band_h + 0.18 + map_h + bottom_h
    fig.set_size_inches(width, height)

    def rect(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x / width, y / height, w / width, h / height)

    ax_map = fig.add_axes(rect(left, bottom_h, axes_w, map_h))
    ax_time = fig.add_axes(rect(left, time_y, axes_w, band_h), sharex=ax_map)
    ax_bar = fig.add_axes(rect(left, cbar_y, min(axes_w, 3.0), 0.14))

    # timeline: background, then each moment as a labelled band
    ax_time.add_patch(Rectangle((-0.5, 0.35), n_rows, 0.3, facecolor="#eeeeee", edgecolor="none"))
    for k, ((s, e, label), lines) in enumerate(zip(moments, layouts)):
        is_own = k == own
        ax_time.add_patch(Rectangle((s - 0.5, 0.06), e - s, 0.88, facecolor="#f2c894" if is_own else "#c9dcef",
                                    edgecolor="#b35806" if is_own else "#1f5f99", lw=2.4 if is_own else 1.2,
                                    gid=f"moment-M{k + 1}"))
        weight = "bold" if is_own else "normal"
        if lines:
            ax_time.text((s + e - 1) / 2, 0.5, "\n".join(lines), ha="center", va="center", fontsize=MIN_FONT,
                         linespacing=1.15, weight=weight, gid=f"moment-label-M{k + 1}")
        else:
            y = 1.0 + (0.03 + 0.2 * levels[k]) / band_h
            ax_time.text((s + e - 1) / 2, y, f"M{k + 1}", ha="center", va="bottom", fontsize=MIN_FONT, weight=weight,
                         transform=ax_time.get_xaxis_transform(), gid=f"moment-label-M{k + 1}")
    ax_time.set_ylim(0, 1)
    ax_time.set_yticks([])
    ax_time.tick_params(labelbottom=False, labelsize=MIN_FONT)
    ax_time.set_ylabel("moments", fontsize=BODY, rotation=0, ha="right", va="center")
    ax_time.grid(False)
    if key_lines:
        fig.text(left / width, (time_y + band_h + numbers_h + 0.06) / height, "\n".join(key_lines),
                 ha="left", va="bottom", fontsize=MIN_FONT)
    if title_lines:
        fig.text(0.2 / width, 1 - 0.1 / height, "\n".join(title_lines), ha="left", va="top", fontsize=TITLE)

    # the map, the query's moment outlined, each word's peak marked
    image = ax_map.imshow(sim, aspect="auto", cmap="magma", interpolation="nearest")
    ax_map.add_patch(Rectangle((q0 - 0.5, -0.5), q1 - q0, n_words, facecolor="none", edgecolor=PEAK_COLOURS["own"],
                               lw=2.4))
    for k, (s, e, _) in enumerate(moments):
        if k != own:
            ax_map.add_patch(Rectangle((s - 0.5, -0.5), e - s, n_words, facecolor="none", edgecolor="#c9dcef", lw=1.2,
                                       ls="--"))
    ax_map.scatter(best, np.arange(n_words), s=80, c=[PEAK_COLOURS[kind] for kind, _ in places], marker="o",
                   edgecolors="black", linewidths=1.2, zorder=3, gid="word-peaks")
    ax_map.set_yticks(range(n_words), word_labels, fontsize=BODY)
    for label, word in zip(ax_map.get_yticklabels(), words):
        if word.lower() in fill:
            label.set_color("0.45")
            label.set_style("italic")
    for row, (text, (kind, _)) in enumerate(zip(peak_labels, places)):
        ax_map.text(1.0 + 0.08 / axes_w, row, text, transform=ax_map.get_yaxis_transform(), ha="left", va="center",
                    fontsize=MIN_FONT, color="#b35806" if kind == "other" else "black",
                    weight="bold" if kind == "other" else "normal")
    ax_map.set_xlabel("frame row (after binning)", fontsize=BODY)
    ax_map.tick_params(labelsize=MIN_FONT)
    ax_map.grid(False)
    bar = fig.colorbar(image, cax=ax_bar, orientation="horizontal")
    bar.set_label("cosine (word, frame)", fontsize=BODY)
    bar.ax.tick_params(labelsize=MIN_FONT)
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.1 / width, 0.05 / height), ncol=ncol,
               fontsize=MIN_FONT, frameon=False, borderaxespad=0)
    return fig


# ----------------------------------------------------------------------------- docs figures


DOCS_PRESET = "tvr"  # docs/method.md describes the paper's settings


def docs_figures(cfg: Optional[Config] = None) -> dict[str, Figure]:
    """The figures docs/method.md shows, by file stem (default: the ``tvr`` preset)."""
    cfg = cfg if cfg is not None else preset(DOCS_PRESET)
    return {f"model_diagram_{cfg.name}": model_diagram(cfg),
            f"gmm_windows_{cfg.name}": gaussian_windows_figure(cfg, block="frame")}


def write_docs_figures(out_dir: str | Path = "docs/figures", cfg: Optional[Config] = None) -> list[Path]:
    """Write each docs figure as PNG (100 dpi) and SVG into ``out_dir``; returns the paths.

    The SVG draws its text as paths (it looks the same without the font) and records
    :func:`figure_text_digest` in its description, so a test can tell whether a committed figure
    still says what the code draws. Same settings, same matplotlib: byte-identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem, fig in docs_figures(cfg).items():
        digest = figure_text_digest(fig)
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        with plt.rc_context({"svg.fonttype": "path", "svg.hashsalt": stem}):
            fig.savefig(png, dpi=100, metadata={"Software": None})
            fig.savefig(svg, metadata={"Date": None, "Description": f"ralbook text digest {digest}"})
        plt.close(fig)
        written += [png, svg]
    return written


def svg_text_digest(path: str | Path) -> Optional[str]:
    """The text digest :func:`write_docs_figures` recorded in an SVG, or None when it has none."""
    text = Path(path).read_text(encoding="utf-8")
    marker = "ralbook text digest "
    start = text.find(marker)
    if start < 0:
        return None
    return text[start + len(marker):start + len(marker) + 64]


__all__ = ["MIN_FONT", "model_diagram", "gaussian_windows_figure", "frame_generation_figure", "word_frame_timeline",
           "docs_figures", "write_docs_figures", "figure_text_digest", "svg_text_digest"]
