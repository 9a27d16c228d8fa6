"""Teaching figures drawn from the settings and code they explain, so they stay true when either changes.

* :func:`model_diagram`: GMMFormer v2 + RAL as a block diagram (sizes, windows, K, alpha, loss weights
  read from a :class:`~ralbook.config.Config`, the window widths and loss weights from the model code);
* :func:`gaussian_windows_figure`: the Gaussian windows a GMM block multiplies its attention logits by;
* :func:`frame_generation_figure`: how the demo generator makes a frame feature (notebook 01);
* :func:`word_frame_timeline`: a word-by-frame map under the whole video's timeline of moments;
* :func:`write_docs_figures`: the PNG + SVG files that ``docs/method.md`` shows.

Every text element is at least :data:`MIN_FONT` points at the figure's own size (figures are 12-14 in
wide, the width a notebook or a slide displays them at), and labels are placed after measuring them.
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

MIN_FONT = 10.0      # smallest text anywhere, in points at the figure's size
BODY = 11.0          # box text, axis labels
TITLE = 12.0         # box titles, figure titles
DIAGRAM_SIZE = (13.5, 9.2)  # inches; 1 diagram unit = 0.1 in

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


def _wrap_measured(fig: Figure, parts: Sequence[str], width_in: float, fontsize: float, sep: str = "   ") -> list[str]:
    """Greedy lines of ``parts`` joined by ``sep``, each measured to fit ``width_in`` inches (a part never splits)."""
    lines: list[str] = []
    for part in parts:
        if lines and _text_size_in(fig, lines[-1] + sep + part, fontsize)[0] <= width_in:
            lines[-1] += sep + part
        else:
            lines.append(part)
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


def _draw_box(ax, name: str, cx: float, cy: float, title: str, body: str, group: str,
              pad: float = 1.0, align: str = "center") -> _Box:
    """A rounded box sized to its measured text (so the label always fits), centred at (cx, cy)."""
    fig = ax.figure
    renderer = _renderer(fig)
    to_data = ax.transData.inverted()
    title_t = ax.text(cx, 0, title, ha="center", va="top", fontsize=TITLE, weight="bold", zorder=3,
                      gid=f"box-{name}-title")
    body_t = ax.text(cx, 0, body, ha="center", va="top", fontsize=BODY, linespacing=1.35, zorder=3,
                     multialignment=align, gid=f"box-{name}-body") if body else None
    sizes = []
    for t in (title_t, body_t):
        if t is not None:
            ext = t.get_window_extent(renderer).transformed(to_data)
            sizes.append((ext.width, ext.height))
    gap = 0.6
    height = sum(h for _, h in sizes) + gap * (len(sizes) - 1)
    width = max(w for w, _ in sizes)
    top = cy + height / 2
    title_t.set_y(top)
    if body_t is not None:
        body_t.set_y(top - sizes[0][1] - gap)
    _, face, edge = GROUPS[group]
    box = _Box(cx - width / 2 - pad, cx + width / 2 + pad, cy - height / 2 - pad, cy + height / 2 + pad)
    ax.add_patch(FancyBboxPatch((box.left, box.bottom), box.right - box.left, box.top - box.bottom,
                                boxstyle="round,pad=0,rounding_size=1.2", facecolor=face, edgecolor=edge,
                                linewidth=1.6, zorder=2, gid=f"box-{name}"))
    return box


def _arrow(ax, a: _Box, b: _Box, a_side: str, b_side: str, a_frac: float = 0.5, b_frac: float = 0.5,
           colour: str = "#333333", via: Optional[float] = None, style: str = "-") -> None:
    """An orthogonal arrow from a side of box ``a`` to a side of box ``b``.

    ``via``: the x (side to side) or y (top/bottom to top/bottom) of the middle segment.
    """
    x0, y0 = a.port(a_side, a_frac)
    x1, y1 = b.port(b_side, b_frac)
    horizontal_a, horizontal_b = a_side in "lr", b_side in "lr"
    if horizontal_a and horizontal_b:
        xm = (x0 + x1) / 2 if via is None else via
        points = [(x0, y0), (x1, y1)] if abs(y0 - y1) < 1e-9 else [(x0, y0), (xm, y0), (xm, y1), (x1, y1)]
    elif horizontal_a:
        points = [(x0, y0), (x1, y0), (x1, y1)]
    elif horizontal_b:
        points = [(x0, y0), (x0, y1), (x1, y1)]
    else:
        ym = (y0 + y1) / 2 if via is None else via
        points = [(x0, y0), (x1, y1)] if abs(x0 - x1) < 1e-9 else [(x0, y0), (x0, ym), (x1, ym), (x1, y1)]
    path = MplPath(points, [MplPath.MOVETO] + [MplPath.LINETO] * (len(points) - 1))
    ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=16, linewidth=1.7, color=colour,
                                 linestyle=style, zorder=1, shrinkA=0, shrinkB=0))


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


def model_diagram(cfg: Config) -> Figure:
    """Block diagram of GMMFormer v2 + RAL with the sizes and weights of ``cfg``.

    Why generated: a hand-drawn picture goes stale when a preset or the model changes; this one reads
    the feature sizes, clip and frame lengths, hidden size, K, alpha, sft_factor and loss weights from
    ``cfg``, the window widths from ``ralbook.model.gmm``, and follows the RAL switches (``model.csa``,
    ``model.word_confidence``, ``model.msra``). Colours group the backbone, RAL's parts and the losses.
    """
    m = cfg.model
    if m.backbone != "gmmformer_v2":
        raise ConfigError(f"model.backbone={m.backbone!r}: the diagram draws GMMFormer v2 + RAL; "
                          "set model.backbone=gmmformer_v2")
    widths = _window_widths()
    fig = plt.figure(figsize=DIAGRAM_SIZE)
    W, H = DIAGRAM_SIZE[0] * 10, DIAGRAM_SIZE[1] * 10
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")
    A, B, C, D, E = 11.0, 38.0, 67.5, 97.0, 122.5  # column centres

    # the GMM block, opened up: text on the left, the window of each branch on the right
    band = _draw_box(ax, "gmm-detail", 31, 83.5,
                     f"Inside each GMM block (L = {m.n_clips} and L = {m.max_frames}): {len(widths)} branches",
                     f"Branch k multiplies its attention logits by a Gaussian\n"
                     f"window of width $w_k$ (right: window of the middle position).\n"
                     f"A softmax over the branches (temperature sft_factor = {_fmt(m.sft_factor)})\n"
                     f"mixes them at every position, with weights computed\n"
                     f"from a learned token that summarises each branch.", "backbone", align="left")
    _window_glyphs(fig, ax, widths, m.max_frames, left=band.right + 2.5, right=W - 1.0, bottom=band.bottom,
                   top=band.top)

    video = _draw_box(ax, "video", A, 49, "Video", f"frame features\n$L_f × D_v$ = {m.max_frames} × {m.visual_dim}",
                      "input")
    query = _draw_box(ax, "query", A, 27, "Query", f"word features\n$L_q × D_t$ = {m.max_desc_len} × {m.text_dim}",
                      "input")
    qenc = _draw_box(ax, "query-encoder", B, 67, "Query encoder",
                     f"Linear {m.text_dim}→{m.hidden_size} + positions\n1 transformer layer ({m.n_heads} heads)\n"
                     f"attention pool → query $q$", "backbone")
    clip_in = _draw_box(ax, "clip-branch", B, 52.5, "Clip branch",
                        f"bin the frames into {m.n_clips}\nuniform clips; Linear\n"
                        f"{m.visual_dim}→{m.hidden_size} + positions",
                        "backbone")
    frame_in = _draw_box(ax, "frame-branch", B, 39, "Frame branch",
                         f"≤ {m.max_frames} frame rows, padded\nLinear {m.visual_dim}→{m.hidden_size} + positions",
                         "backbone")
    gmm_clip = _draw_box(ax, "gmm-clip", C, 52.5, f"GMM block, L = {m.n_clips}",
                         f"→ {m.n_clips} clip tokens ($d$ = {m.hidden_size})", "backbone")
    gmm_frame = _draw_box(ax, "gmm-frame", C, 39, f"GMM block, L = {m.max_frames}",
                          f"→ frame tokens $f$ ($d$ = {m.hidden_size})", "backbone")
    clip_score = _draw_box(ax, "clip-score", D, 60, "Clip score $S_c$",
                           f"max over the {m.n_clips} clips\nof cos($q$, clip)", "backbone")
    if m.csa:
        weighting = ("word confidence\n$g_t$ = softmax$_t$ MLP($w_t$)" if m.word_confidence
                     else "uniform word weights\n$g_t$ = 1 / (number of words)")
        frame_score = _draw_box(ax, "frame-score", D, 30, "CSA frame score $S_f$",
                                f"{weighting}\n$S_f$ = Σ$_t$ $g_t$ · max$_f$ cos($w_t$, $f$)", "csa")
    else:
        frame_score = _draw_box(ax, "frame-score", D, 30, "Frame score $S_f$",
                                f"max over frames\nof cos($q$, $f$)", "backbone")
    fusion = _draw_box(ax, "fusion", E, 46, "Ranking score",
                       f"$S$ = α·$S_c$ + (1 − α)·$S_f$\nα = {_fmt(m.alpha)}", "backbone")
    losses = _draw_box(ax, "losses", E, 17, "Training losses", "\n".join(_loss_lines(cfg)), "loss", align="left")
    words = msra = None
    if m.csa or m.msra:
        words = _draw_box(ax, "word-encoder", B, 14, "CSA word encoder" if m.csa else "Word encoder (MSRA)",
                          f"own Linear {m.text_dim}→{m.hidden_size},\nshared positions,\n"
                          f"1 transformer layer\n→ word tokens $w_t$", "csa" if m.csa else "msra")
    if m.msra:
        msra = _draw_box(ax, "msra", C, 21, "MSRA",
                         f"Gaussian of each video's frames\nand of its queries' words:\n"
                         f"mean μ, standard deviation σ;\nK = {m.n_proxies} proxies z = μ + ε·σ\n"
                         f"→ $L_{{PM}}$, $L_{{DA}}$", "msra")
    drawn = {"input", "backbone", "loss"} | {g for g, on in (("csa", m.csa), ("msra", m.msra)) if on}
    legend = [Patch(facecolor=f, edgecolor=e, label=label) for g, (label, f, e) in GROUPS.items() if g in drawn]
    ax.legend(handles=legend, loc="lower left", bbox_to_anchor=(0.004, 0.005), fontsize=BODY, frameon=False)

    video_c, query_c, frame_c, word_c = "#1f5f99", "#555555", "#1f5f99", "#b35806"
    _arrow(ax, video, clip_in, "r", "l", colour=video_c)
    _arrow(ax, video, frame_in, "r", "l", colour=video_c)
    _arrow(ax, query, qenc, "l", "l", colour=query_c, via=0.8)
    _arrow(ax, clip_in, gmm_clip, "r", "l", colour=video_c)
    _arrow(ax, frame_in, gmm_frame, "r", "l", colour=video_c)
    _arrow(ax, qenc, clip_score, "r", "t", colour=query_c)
    _arrow(ax, gmm_clip, clip_score, "r", "l", b_frac=0.3, colour=video_c)
    _arrow(ax, gmm_frame, frame_score, "r", "t", colour=frame_c)
    _arrow(ax, clip_score, fusion, "r", "t", colour="#333333")
    _arrow(ax, frame_score, fusion, "r", "b", colour="#333333")
    if words is not None:
        _arrow(ax, query, words, "r", "l", a_frac=0.3, colour=query_c)
        if m.csa:
            _arrow(ax, words, frame_score, "r", "b", a_frac=0.35, colour=word_c)
        else:  # the backbone frame score takes the pooled query
            _arrow(ax, qenc, frame_score, "r", "l", a_frac=0.25, colour=query_c, via=(gmm_frame.right + D) / 2 - 3)
    else:
        _arrow(ax, qenc, frame_score, "r", "l", a_frac=0.25, colour=query_c, via=(gmm_frame.right + D) / 2 - 3)
    if msra is not None and words is not None:
        _arrow(ax, gmm_frame, msra, "b", "t", colour=frame_c)
        _arrow(ax, words, msra, "r", "l", a_frac=0.7, colour=word_c)
    return fig


def _window_glyphs(fig: Figure, ax, widths: Sequence[Optional[float]], length: int, left: float, right: float,
                   bottom: float, top: float) -> None:
    """One small plot per GMM branch: the window row of the block's middle position over its positions."""
    n = len(widths)
    gap = 1.2
    size_w = (right - left - gap * (n - 1)) / n
    label_h = 2.4  # room under each glyph for its width label (diagram units)
    W, H = ax.get_xlim()[1], ax.get_ylim()[1]
    x = np.arange(length)
    for k, width in enumerate(widths):
        x0 = left + k * (size_w + gap)
        gax = fig.add_axes((x0 / W, (bottom + label_h + 0.6) / H, size_w / W, (top - bottom - label_h - 1.2) / H))
        gax.fill_between(x, _window_row(length, width, length // 2), color=GROUPS["backbone"][2], alpha=0.85, lw=0)
        gax.set_xlim(0, length - 1)
        gax.set_ylim(0, 1.05)
        gax.set_xticks([])
        gax.set_yticks([])
        gax.set_facecolor("white")
        for spine in gax.spines.values():
            spine.set_color("#999999")
        ax.text(x0 + size_w / 2, bottom + 0.4, "none" if width is None else f"w = {_fmt(width)}",
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
    ncols = 4
    nrows = int(np.ceil(len(widths) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(13.0, 2.6 * nrows + 1.6), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
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
    video = f"a video of {n} rows" if n < length else f"a full {length}-row video"
    fig.suptitle(f"Gaussian windows of the GMM {block} block (L = {length}), shown over {video}\n"
                 f"A branch multiplies its attention logits by these weights: 1 keeps a key's logit, 0 sets it to 0 "
                 f"(not excluded).", fontsize=TITLE)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(centres), fontsize=BODY, frameon=False)
    return fig


# ----------------------------------------------------------------------------- 3. demo frame generation


def frame_generation_figure(params=None, n_frames: int = 60, seed: int = 0) -> Figure:
    """How the demo generator makes frame features, with its real parameters and one generated video.

    Calls the generator's own functions (``ralbook.demo``) on a fresh video, so the picture is what
    ``make demo`` does. Left: each frame's projection onto the visual directions of one moment's four
    concepts, over the whole video (moments shaded). Right: mean projections inside that moment vs
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

    fig = plt.figure(figsize=(13.0, 8.4), layout="constrained")
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
    key = _wrap_measured(fig, [f"M{k + 1} = {' '.join(mo.concepts[s] for s in demo.SLOTS)}"
                               for k, mo in enumerate(moments)], 12.3, BODY, sep="  ·  ")
    lines = recipe + [f"This video ({n_frames} frames): " + key[0], *key[1:]]
    fig.text(0.012, 1 - 0.12 / 8.4, f"How a demo frame feature is made ({p.visual_dim}-d frames, seed {p.seed})",
             ha="left", va="top", fontsize=TITLE, weight="bold")
    text = fig.text(0.012, 1 - 0.48 / 8.4, "\n".join(lines), ha="left", va="top", fontsize=BODY, linespacing=1.45)
    text_h = text.get_window_extent(_renderer(fig)).height / fig.dpi
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - (0.6 + text_h) / 8.4))
    ax_line, ax_bar = fig.subplots(1, 2, width_ratios=[2.0, 1.0])
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
    ax_line.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=4, frameon=False)
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
    ax_bar.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=1, frameon=False)
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
                        fillers: Sequence[str] = ()) -> Figure:
    """A word-by-frame cosine map with the whole video's timeline of moments above it.

    ``moments``: (first_row, end_row, label) per ground-truth moment in frame rows (end exclusive,
    e.g. from ``analysis.frame_span_to_rows``), label = its concepts; ``query_span``: the rows of the
    query's own moment. Each word's best frame (the max that enters the frame score) is marked, and
    the right margin says where it fell: the query's moment, another moment Mk, or background. So a
    content word that finds its best frame in *another* moment sharing a concept is visible at once.
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

    def where(row: int) -> tuple[str, str]:
        for k, (s, e, _) in enumerate(moments):
            if s <= row < e:
                return ("own", "own moment") if k == own else ("other", f"M{k + 1}, other moment")
        if q0 <= row < q1:
            return "own", "own moment"
        return "background", "background"

    places = [where(int(r)) for r in best]
    fill = {w.lower() for w in fillers}
    word_labels = list(words) if conf is None else [f"{w} ({c:.2f})" for w, c in zip(words, conf)]
    peak_labels = [f"→ frame {r}: {text}" for r, (_, text) in zip(best, places)]

    fig = plt.figure(figsize=(13.0, 1.0))
    width = 13.0
    left = max(_text_size_in(fig, s, BODY)[0] for s in word_labels) + 0.55
    right_text = max(_text_size_in(fig, s, MIN_FONT, weight="bold")[0] for s in peak_labels) + 0.15
    cbar_w, cbar_label = 0.18, 0.95
    axes_w = width - left - right_text - 0.2 - cbar_w - cbar_label
    if axes_w < 4.0:
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
            keys.append(f"{name} = {label}" + (" (the query's moment)" if k == own else ""))
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
    bottom_h = 1.25
    time_y = bottom_h + map_h + 0.18
    height = title_h + key_h + numbers_h + band_h + 0.18 + map_h + bottom_h
    fig.set_size_inches(width, height)

    def rect(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x / width, y / height, w / width, h / height)

    ax_map = fig.add_axes(rect(left, bottom_h, axes_w, map_h))
    ax_time = fig.add_axes(rect(left, time_y, axes_w, band_h), sharex=ax_map)
    ax_bar = fig.add_axes(rect(left + axes_w + right_text + 0.2, bottom_h, cbar_w, map_h))

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
    bar = fig.colorbar(image, cax=ax_bar)
    bar.set_label("cosine (word, frame)", fontsize=BODY)
    bar.ax.tick_params(labelsize=MIN_FONT)
    handles = [Line2D([], [], ls="", marker="o", markersize=9, markerfacecolor=PEAK_COLOURS[k], markeredgecolor="black",
                      label=f"best frame of a word: {text}")
               for k, text in (("own", "in the query's moment"), ("other", "in another moment"),
                               ("background", "in background"))]
    handles.append(Patch(facecolor="none", edgecolor=PEAK_COLOURS["own"], lw=2.4, label="query's own moment"))
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(left / width, 0.02), ncol=2, fontsize=MIN_FONT,
               frameon=False)
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
