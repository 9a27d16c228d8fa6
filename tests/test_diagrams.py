"""ralbook.viz.diagrams: the teaching figures say what the settings say, are readable, and fit their figure.

Readability is checked on what is actually drawn, at the size a notebook shows it: a figure is at most
DISPLAY_WIDTH_IN (9 in) wide, so the browser never shrinks it, every text the renderer draws is at least
10 pt at that size, its extent lies inside the figure, and (model diagram, windows) no two texts' extents
overlap; the model diagram's arrows neither cross each other nor pass through a box. Plotted values are compared with independent computations (the window formula written out
from docs/method.md, argmax by a loop, the demo signal from the world's concept vectors).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from ralbook.config import preset  # noqa: E402
from ralbook.data import demo  # noqa: E402
from ralbook.errors import ConfigError, DataError  # noqa: E402
from ralbook.viz import diagrams as D  # noqa: E402
from ralbook.viz.plots import DISPLAY_WIDTH_IN  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WIDTHS = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)  # GMMFormer v2's branch widths, in model order (method doc)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def drawn_texts(fig, monkeypatch) -> list[tuple[Text, object]]:
    """(text, window extent) of every non-empty text the renderer draws (ticks out of view are not drawn)."""
    drawn = []
    original = Text.draw

    def spy(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, self.get_window_extent(renderer)))
        return original(self, renderer)

    with monkeypatch.context() as m:
        m.setattr(Text, "draw", spy)
        fig.canvas.draw()
    return drawn


def assert_readable(fig, monkeypatch, no_overlap: bool = False) -> list[str]:
    """At most DISPLAY_WIDTH_IN wide, every drawn text >= 10 pt at the displayed size and inside the figure
    (and, with ``no_overlap``, no two texts' extents overlapping); returns the drawn strings.

    Jupyter shows a figure at its tight bounding box (which grows past the figure when something sticks
    out) plus savefig.pad_inches on each side, scaled down to DISPLAY_WIDTH_IN when wider: a text's
    displayed size is its size times that shrink."""
    width = fig.get_size_inches()[0]
    assert width <= DISPLAY_WIDTH_IN + 1e-9, f"figure width {width} in: a notebook shows at most {DISPLAY_WIDTH_IN} in"
    texts = drawn_texts(fig, monkeypatch)
    assert texts, "nothing drawn"
    tight = fig.get_tightbbox(fig.canvas.get_renderer()).width
    shown = max(width, tight + 2 * float(matplotlib.rcParams["savefig.pad_inches"]))
    shrink = min(1.0, DISPLAY_WIDTH_IN / shown)
    small = [(t.get_text(), t.get_fontsize() * shrink) for t, _ in texts if t.get_fontsize() * shrink < 10.0]
    assert not small, f"{shown:.2f} in wide as shown: text below 10 pt as displayed: {small}"
    box = fig.bbox
    outside = [t.get_text() for t, e in texts
               if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1]
    assert not outside, f"text outside the figure: {outside}"
    if no_overlap:
        clashes = [(a.get_text(), b.get_text()) for i, (a, ea) in enumerate(texts) for b, eb in texts[i + 1:]
                   if overlap_px(ea, eb) > 0.5]
        assert not clashes, f"texts drawn over each other: {clashes}"
    return [t.get_text() for t, _ in texts]


def overlap_px(a, b) -> float:
    """Side (px) of the smaller overlap of two extents; 0 when they are apart or only touch."""
    return max(0.0, min(min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)))


def arrow_segments(fig) -> list[list[tuple[float, float]]]:
    """Each arrow's line (without its head) as points in display pixels."""
    ax = fig.axes[0]
    lines = []
    for arrow in (p for p in ax.patches if isinstance(p, FancyArrowPatch)):
        path = arrow.get_path()
        starts = [i for i, code in enumerate(path.codes) if code == path.MOVETO]
        body = path.vertices[:starts[1] if len(starts) > 1 else len(path.vertices)]
        lines.append([tuple(ax.transData.transform(v)) for v in body])
    return lines


def segments_meet(p1, p2, q1, q2) -> bool:
    """Whether two closed segments share a point (orientation test, collinear overlaps included)."""
    def orient(a, b, c):
        v = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        return 0 if abs(v) < 1e-6 else (1 if v > 0 else -1)

    def on(a, b, c):  # c on segment ab, given collinear
        return min(a[0], b[0]) - 1e-6 <= c[0] <= max(a[0], b[0]) + 1e-6 and \
            min(a[1], b[1]) - 1e-6 <= c[1] <= max(a[1], b[1]) + 1e-6
    o1, o2, o3, o4 = orient(p1, p2, q1), orient(p1, p2, q2), orient(q1, q2, p1), orient(q1, q2, p2)
    if o1 != o2 and o3 != o4 and 0 not in (o1, o2, o3, o4):
        return True
    return any(o == 0 and on(a, b, c) for o, a, b, c in ((o1, p1, p2, q1), (o2, p1, p2, q2), (o3, q1, q2, p1),
                                                         (o4, q1, q2, p2)))


def window_row_by_formula(length: int, width: float, row: int) -> np.ndarray:
    """docs/method.md#building-blocks, written out: exp(-(j/(L-1) - i/L)^2 / 2s^2), s = max(w, .01)/9, row max 1."""
    s = max(width, 0.01) / 9
    values = [math.exp(-((j / (length - 1) - row / length) ** 2) / (2 * s * s)) for j in range(length)]
    top = max(values)
    return np.array([v / top for v in values])


# ----------------------------------------------------------------------------- model diagram


SWITCHES = {"tvr": ("tvr", ()), "demo": ("demo", ()), "no MSRA": ("demo", ("model.msra=false",)),
            "no CSA": ("demo", ("model.csa=false",)), "uniform words": ("demo", ("model.word_confidence=false",)),
            "backbone only": ("demo", ("model.csa=false", "model.msra=false"))}


def _switched(name: str):
    base, overrides = SWITCHES[name]
    cfg = preset(base)
    for assignment in overrides:
        cfg = cfg.override(assignment)
    return cfg


@pytest.mark.parametrize("name", list(SWITCHES))
def test_model_diagram_is_readable_and_every_label_fits_its_box(monkeypatch, name):
    cfg = _switched(name)
    fig = D.model_diagram(cfg)
    assert_readable(fig, monkeypatch, no_overlap=True)
    renderer = fig.canvas.get_renderer()
    boxes = {p.get_gid(): p for p in fig.findobj(FancyBboxPatch) if (p.get_gid() or "").startswith("box-")}
    expected = {"video", "query", "frame-branch", "clip-branch", "query-encoder", "gmm-frame", "gmm-clip", "clip-score",
                "frame-score", "fusion", "losses", "gmm-detail"}
    expected |= {"word-encoder"} if cfg.model.csa or cfg.model.msra else set()
    expected |= {"msra"} if cfg.model.msra else set()
    assert set(boxes) == {f"box-{n}" for n in expected}
    for text in fig.findobj(Text):
        gid = text.get_gid() or ""
        if gid.startswith("box-"):
            outer = boxes[gid.rsplit("-", 1)[0]].get_window_extent(renderer)
            inner = text.get_window_extent(renderer)
            assert outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1, gid
    # no two boxes overlap, each lies inside the figure, the legend overlaps none
    extents = {g: p.get_window_extent(renderer) for g, p in boxes.items()}
    names = sorted(extents)
    for i, a in enumerate(names):
        assert fig.bbox.x0 <= extents[a].x0 and extents[a].x1 <= fig.bbox.x1, a
        assert fig.bbox.y0 <= extents[a].y0 and extents[a].y1 <= fig.bbox.y1, a
        for b in names[i + 1:]:
            assert not extents[a].overlaps(extents[b]), (a, b)
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    assert not any(overlap_px(legend, e) > 0 for e in extents.values())
    # the window glyphs lie inside the GMM detail box, apart from each other
    detail = extents["box-gmm-detail"]
    glyphs = [ax.get_window_extent(renderer) for ax in fig.axes[1:]]
    assert all(detail.x0 < g.x0 and g.x1 < detail.x1 and detail.y0 < g.y0 and g.y1 < detail.y1 for g in glyphs)
    assert all(overlap_px(g, h) == 0 for i, g in enumerate(glyphs) for h in glyphs[i + 1:])
    # arrows run from a box's edge to another box's edge, through no box and no legend, and never meet
    obstacles = [e.padded(-2) for e in extents.values()] + [legend]
    lines = arrow_segments(fig)

    def box_at(point) -> str:
        x, y = point
        hits = [g.removeprefix("box-") for g, e in extents.items()
                if (abs(x - e.x0) < 4 or abs(x - e.x1) < 4) and e.y0 - 4 < y < e.y1 + 4 or
                (abs(y - e.y0) < 4 or abs(y - e.y1) < 4) and e.x0 - 4 < x < e.x1 + 4]
        assert len(hits) == 1, (point, hits)
        return hits[0]
    edges = [(box_at(line[0]), box_at(line[-1])) for line in lines]
    # the data flow the method describes (docs/method.md), switch by switch
    m = cfg.model
    flow = {("video", "frame-branch"), ("video", "clip-branch"), ("frame-branch", "gmm-frame"),
            ("clip-branch", "gmm-clip"), ("gmm-clip", "clip-score"), ("query", "query-encoder"),
            ("query-encoder", "clip-score"), ("gmm-frame", "frame-score"), ("clip-score", "fusion"),
            ("frame-score", "fusion")}
    flow |= {("query", "word-encoder")} if m.csa or m.msra else set()
    flow |= {("word-encoder", "frame-score")} if m.csa else {("query-encoder", "frame-score")}
    flow |= {("gmm-frame", "msra"), ("word-encoder", "msra")} if m.msra else set()
    assert sorted(edges) == sorted(flow)
    for line in lines:
        for (x0, y0), (x1, y1) in zip(line, line[1:]):
            for t in np.linspace(0, 1, 41):
                x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                assert not any(o.x0 < x < o.x1 and o.y0 < y < o.y1 for o in obstacles), (name, line)
    for i, a in enumerate(lines):
        for b in lines[i + 1:]:
            assert not any(segments_meet(p1, p2, q1, q2) for p1, p2 in zip(a, a[1:]) for q1, q2 in zip(b, b[1:])), (a, b)


def test_model_diagram_text_follows_the_config(monkeypatch):
    base = preset("tvr")
    changed = base
    for assignment in ("data.n_clips=16", "data.max_frames=64", "data.visual_dim=1024", "data.text_dim=512",
                       "model.n_proxies=4", "model.alpha=0.7", "model.hidden_size=256", "model.sft_factor=0.6",
                       "loss.pm_weight=0.01", "loss.loss_factor=[0.02, 0.03, 0.003, 0.11]"):
        changed = changed.override(assignment)
    old = " | ".join(assert_readable(D.model_diagram(base), monkeypatch))
    new = " | ".join(assert_readable(D.model_diagram(changed), monkeypatch))
    for text_old, text_new in [("GMM block, L = 32", "GMM block, L = 16"), ("GMM block, L = 128", "GMM block, L = 64"),
                               ("K = 6 proxies", "K = 4 proxies"), ("α = 0.5", "α = 0.7"),
                               ("128 × 3072", "64 × 1024"), ("30 × 768", "30 × 512"), ("768→384", "512→256"),
                               ("sft_factor = 0.09", "sft_factor = 0.6"), ("0.004 · $L_{PM}$", "0.01 · $L_{PM}$"),
                               ("0.05 · NCE on $S_c$", "0.02 · NCE on $S_c$"), ("0.09 · OT", "0.11 · OT")]:
        assert text_old in old and text_old not in new, text_old
        assert text_new in new, text_new
    # one label per branch, in the model's order
    labels = [t for t in new.split(" | ") if t == "none" or t.startswith("w = ")]
    assert labels == ["none"] + [f"w = {w:g}" for w in WIDTHS[1:]]


def test_model_diagram_follows_the_ral_switches(monkeypatch):
    cfg = preset("demo")
    full = assert_readable(D.model_diagram(cfg), monkeypatch)
    assert "MSRA" in full and "CSA frame score $S_f$" in full
    no_msra = " | ".join(assert_readable(D.model_diagram(cfg.override("model.msra=false")), monkeypatch))
    assert "MSRA" not in no_msra.split(" | ") and "L_{PM}" not in no_msra and "L_{DA}" not in no_msra
    uniform = " | ".join(assert_readable(D.model_diagram(cfg.override("model.word_confidence=false")), monkeypatch))
    assert "uniform word weights" in uniform and "MLP" not in uniform
    bare = assert_readable(D.model_diagram(cfg.override("model.csa=false").override("model.msra=false")), monkeypatch)
    assert "Frame score $S_f$" in bare and not any("CSA" in t for t in bare)
    with pytest.raises(ConfigError, match="gmmformer_v2"):
        D.model_diagram(cfg.override("model.backbone=ms_sl"))


def test_model_diagram_glyphs_draw_the_model_windows():
    cfg = preset("demo")
    fig = D.model_diagram(cfg)
    glyphs = [ax for ax in fig.axes[1:]]
    assert len(glyphs) == len(WIDTHS)
    length = cfg.model.max_frames
    for ax, width in zip(glyphs, WIDTHS):
        # fill_between's outline: a start point, then the upper edge (x = 0..L-1), then the lower edge back
        upper = ax.collections[0].get_paths()[0].vertices[1:length + 1]
        expected = np.ones(length) if width is None else window_row_by_formula(length, width, length // 2)
        np.testing.assert_allclose(upper[:, 0], np.arange(length))
        np.testing.assert_allclose(upper[:, 1], expected, atol=1e-6)


# ----------------------------------------------------------------------------- Gaussian windows


@pytest.mark.parametrize("block,n_frames", [("frame", 40), ("frame", None), ("clip", None)])
def test_gaussian_windows_match_the_formula(monkeypatch, block, n_frames):
    cfg = preset("demo")
    length = cfg.model.max_frames if block == "frame" else cfg.model.n_clips
    n = length if n_frames is None else n_frames
    fig = D.gaussian_windows_figure(cfg, n_frames=n_frames, block=block, centres=[0, n // 2, n - 1])
    assert_readable(fig, monkeypatch, no_overlap=True)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == len(WIDTHS)
    seen = set()
    for ax in panels:
        index = int(ax.get_title().split(":")[0].removeprefix("branch ")) - 1
        seen.add(index)
        width = WIDTHS[index]
        assert (width is None) == ("no window" in ax.get_title())
        if width is not None:
            assert f"w = {width:g}" in ax.get_title()
            assert f"σ ≈ {max(width, 0.01) / 9 * (length - 1):.3g} rows" in ax.get_title()
        curves = [line for line in ax.get_lines() if len(line.get_xdata()) == n]
        assert len(curves) == 3
        for line, centre in zip(curves, [0, n // 2, n - 1]):
            expected = np.ones(n) if width is None else window_row_by_formula(length, width, centre)[:n]
            np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-6)
    assert seen == set(range(len(WIDTHS)))


def test_gaussian_windows_reject_impossible_requests():
    cfg = preset("demo")
    with pytest.raises(ConfigError, match=r"n_frames=200.*model.max_frames = 128"):
        D.gaussian_windows_figure(cfg, n_frames=200)
    with pytest.raises(ConfigError, match="model.n_clips = 32"):
        D.gaussian_windows_figure(cfg, n_frames=33, block="clip")
    with pytest.raises(ConfigError, match="centres"):
        D.gaussian_windows_figure(cfg, n_frames=40, centres=[40])
    with pytest.raises(ConfigError, match="block"):
        D.gaussian_windows_figure(cfg, block="word")


# ----------------------------------------------------------------------------- demo frame generation


def test_frame_generation_figure_shows_the_generator_signal(monkeypatch):
    params = demo.DemoParams(frame_noise=0.5, background_strength=2.0)
    fig = D.frame_generation_figure(params, n_frames=50, seed=3)
    texts = " | ".join(assert_readable(fig, monkeypatch, no_overlap=True))
    assert "0.5·noise" in texts and "2 · scene direction" in texts and "0.55·family" in texts
    ax_line, ax_bar = fig.axes[:2]
    concepts = dict(label.split(": ") for label in (line.get_label() for line in ax_line.get_lines())
                    if ": " in label)
    assert list(concepts) == list(demo.SLOTS)
    orange = [p for p in ax_line.patches if matplotlib.colors.to_hex(p.get_facecolor()) == "#f2c894"]
    assert len(orange) == 1
    xs = orange[0].get_path().transformed(orange[0].get_patch_transform()).vertices[:, 0]
    start, end = int(round(xs.min() + 0.5)), int(round(xs.max() + 0.5))
    # the clean signal inside the moment, from the world's concept vectors (no frames involved)
    world = demo.build_world(params)
    length = end - start
    envelope = 0.6 + 0.4 * np.sin(np.pi * (np.arange(length) + 0.5) / length)
    static = params.person_weight * world.latent["person"]
    for slot, weight in zip(demo.SLOTS[1:], params.slot_weights[1:]):
        static = static + weight * world.latent[concepts[slot]]
    action = params.slot_weights[0] * world.latent[concepts["action"]]
    expected = [static @ world.latent[concepts[s]] + envelope.mean() * action @ world.latent[concepts[s]]
                for s in demo.SLOTS]
    bars = {container.get_label(): [bar.get_width() for bar in container] for container in ax_bar.containers}
    assert len(bars) == 3 and all(len(v) == len(demo.SLOTS) for v in bars.values())
    signal = [v for label, v in bars.items() if label.endswith("signal only")][0]
    np.testing.assert_allclose(signal, expected, atol=1e-9)
    with pytest.raises(ConfigError, match="at least 24 frames"):
        D.frame_generation_figure(params, n_frames=10)


# ----------------------------------------------------------------------------- word map under the timeline


def _timeline_case(rng: np.random.Generator):
    """Eight words over 90 frame rows; moments M1 [5, 20), M2 [30, 33) (narrow), M3 [40, 60), M4 [61, 63)."""
    words = ["then", "a", "person", "rides", "the", "red", "bike", "outside"]
    sim = rng.normal(0.0, 0.1, (len(words), 90))
    sim[6, 12] = 2.0   # "bike" peaks in M1, another moment
    sim[3, 45] = 2.0   # "rides" peaks in M3, the query's moment
    sim[0, 80] = 2.0   # "then" peaks in the background
    moments = [(5, 20, "ride bike blue park"), (30, 33, "throw ball red street"), (40, 60, "ride bike red park"),
               (61, 63, "eat apple green kitchen")]
    return sim, words, moments


def test_word_frame_timeline_marks_each_words_best_frame(monkeypatch):
    sim, words, moments = _timeline_case(np.random.default_rng(0))
    fig = D.word_frame_timeline(sim, words, moments, (40, 60), confidence=np.full(len(words), 1 / len(words)),
                                title="v1#enc#0: then a person rides the red bike outside " * 3,
                                fillers=["then", "a", "the"])
    texts = assert_readable(fig, monkeypatch, no_overlap=True)
    peaks = [c for c in fig.findobj(PathCollection) if c.get_gid() == "word-peaks"]
    assert len(peaks) == 1
    offsets = peaks[0].get_offsets()
    expected = [max(range(sim.shape[1]), key=lambda f: sim[w, f]) for w in range(len(words))]  # brute force
    assert [int(x) for x in offsets[:, 0]] == expected
    assert [int(y) for y in offsets[:, 1]] == list(range(len(words)))
    assert "→ frame 12: M1, other moment" in texts
    assert "→ frame 45: own moment" in texts
    assert "→ frame 80: background" in texts
    # every moment is named on the timeline, and a label drawn inside a band fits in it
    renderer = fig.canvas.get_renderer()
    bands = {p.get_gid(): p for p in fig.findobj(Rectangle) if (p.get_gid() or "").startswith("moment-M")}
    labels = {t.get_gid(): t for t in fig.findobj(Text) if (t.get_gid() or "").startswith("moment-label-")}
    assert sorted(bands) == [f"moment-M{k}" for k in range(1, 5)]
    assert sorted(labels) == [f"moment-label-M{k}" for k in range(1, 5)]
    for k in range(1, 5):
        band, label = bands[f"moment-M{k}"].get_window_extent(renderer), labels[f"moment-label-M{k}"]
        extent = label.get_window_extent(renderer)
        assert label.get_text().startswith(f"M{k}")
        if extent.y0 < band.y1:  # drawn inside: must fit
            assert band.x0 <= extent.x0 and extent.x1 <= band.x1 and band.y0 <= extent.y0 and extent.y1 <= band.y1
    # the query's moment is the highlighted band; narrow bands' concepts are in the key
    assert bands["moment-M3"].get_linewidth() > bands["moment-M1"].get_linewidth()
    assert any("M2 = throw ball red street" in t for t in texts)


def test_word_frame_timeline_rejects_inconsistent_inputs():
    sim, words, moments = _timeline_case(np.random.default_rng(1))
    with pytest.raises(DataError, match="8 words"):
        D.word_frame_timeline(sim[:5], words, moments, (40, 60))
    with pytest.raises(DataError, match="query_span"):
        D.word_frame_timeline(sim, words, moments, (40, 95))
    with pytest.raises(DataError, match="moment M2"):
        D.word_frame_timeline(sim, words, [moments[0], (50, 40, "x")], (40, 60))
    with pytest.raises(DataError, match="confidence"):
        D.word_frame_timeline(sim, words, moments, (40, 60), confidence=np.ones(3))


# ----------------------------------------------------------------------------- docs figures


def test_write_docs_figures_and_the_committed_ones_are_current(tmp_path):
    written = D.write_docs_figures(tmp_path)
    assert sorted(p.name for p in written) == ["gmm_windows_tvr.png", "gmm_windows_tvr.svg",
                                               "model_diagram_tvr.png", "model_diagram_tvr.svg"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in data[:600]
    fresh = {stem: D.figure_text_digest(fig) for stem, fig in D.docs_figures().items()}
    for stem, digest in fresh.items():
        assert D.svg_text_digest(tmp_path / f"{stem}.svg") == digest
        committed = REPO / "docs" / "figures" / f"{stem}.svg"
        assert D.svg_text_digest(committed) == digest, (
            f"{committed.relative_to(REPO)} is stale: run python -c 'from ralbook.viz.diagrams import "
            f"write_docs_figures; write_docs_figures()' and commit docs/figures")
        assert (REPO / "docs" / "figures" / f"{stem}.png").is_file()


def test_word_frame_timeline_labels_relative_confidence_and_names_the_span(monkeypatch):
    """Word labels show g x n (the strip's unit, 1 = uniform share); a typed query's span is named as given."""
    sim, words, moments = _timeline_case(np.random.default_rng(1))
    conf = np.array([0.05, 0.05, 0.15, 0.2, 0.05, 0.15, 0.3, 0.05])
    fig = D.word_frame_timeline(sim, words, moments, (40, 60), confidence=conf,
                                span_name="the moment sharing most concepts")
    texts = assert_readable(fig, monkeypatch, no_overlap=True)
    assert "bike (2.40)" in texts and "then (0.40)" in texts            # 0.3 x 8, 0.05 x 8
    assert "→ frame 45: outlined moment" in texts and not any("own moment" in t for t in texts)
    assert "the moment sharing most concepts" in texts
    assert "best frame of a word: in the moment sharing most concepts" in texts
