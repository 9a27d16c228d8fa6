"""ralbook.plots: every figure function on small synthetic inputs; checks what is drawn, not only that it runs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ralbook.viz import plots as P


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _bar_heights(ax) -> list[float]:
    return [p.get_height() for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = P.save_figure(fig, "01_data_inspection_run-a_counts", tmp_path / "figs")
    assert [p.name for p in paths] == ["01_data_inspection_run-a_counts.png", "01_data_inspection_run-a_counts.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="plain file stem"):
        P.save_figure(fig, "../escape", tmp_path)
    with pytest.raises(ValueError, match="plain file stem"):
        P.save_figure(fig, "", tmp_path)


def test_figure_saver_names_and_remembers(tmp_path):
    save = P.FigureSaver(tmp_path, "04_uncertainty", "my run")
    fig, _ = plt.subplots()
    save(fig, "sigma_hist")
    save(fig, "projection")
    assert [p.name for p in save.paths] == ["04_uncertainty_my-run_sigma_hist.png", "04_uncertainty_my-run_sigma_hist.pdf",
                                            "04_uncertainty_my-run_projection.png", "04_uncertainty_my-run_projection.pdf"]
    assert all(p.is_file() for p in save.paths)


def test_figure_name_sanitises_parts():
    assert P.figure_name("04_uncertainty", "runs/demo 1", "sigma_hist") == "04_uncertainty_runs-demo-1_sigma_hist"
    assert P.figure_name("03", "", "x") == "03_x"


def test_split_counts_bars_carry_the_counts():
    fig = P.split_counts({"train": {"videos": 6, "captions": 20}, "test": {"videos": 2, "captions": 7}})
    assert isinstance(fig, Figure)
    assert sorted(_bar_heights(fig.axes[0])) == [2, 6, 7, 20]


def test_histogram_grid_hides_unused_panels():
    rng = np.random.default_rng(0)
    panels = {"frames per video": {"train": rng.integers(10, 50, 30), "test": rng.integers(10, 50, 10)},
              "captions per video": {"train": rng.integers(1, 5, 30)},
              "feature norm": {"train": rng.normal(1, 0.1, 30)}}
    fig = P.histogram_grid(panels, ncols=2, discrete=["captions per video"])
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == list(panels)
    assert not fig.axes[3].get_visible()


def test_moment_timelines_draws_each_span():
    videos = [("v1", 40, [(2, 10, "run"), (20, 30, "eat")]), ("v2", 25, [(5, 12, "run")])]
    fig = P.moment_timelines(videos)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["v1", "v2"]
    # 2 background bars + 3 moments
    assert len(ax.collections) == 5
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["eat", "run"]


def test_training_curves_panels_and_best_epoch():
    fig = P.training_curves([1, 2, 3], {"nce_clip": [3.0, 2.0, 1.5], "trip_frame": [0.2, 0.1, 0.05]},
                            val_sumr=[50.0, 80.0, 75.0], best_epoch=2)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_yscale() == "log"
    assert list(fig.axes[1].lines[0].get_ydata()) == [50.0, 80.0, 75.0]
    assert fig.axes[1].lines[1].get_xdata()[0] == 2
    # a negative part (possible for weighted terms) keeps the scale linear
    fig2 = P.training_curves([1, 2], {"x": [-1.0, 1.0]})
    assert len(fig2.axes) == 1 and fig2.axes[0].get_yscale() == "linear"


def test_grouped_bars_and_rank_histogram_values():
    table = {"clip": {"R@1": 10.0, "R@5": 30.0}, "fused": {"R@1": 12.5, "R@5": 33.0}}
    fig = P.grouped_bars(table, "Recall")
    assert sorted(_bar_heights(fig.axes[0])) == [10.0, 12.5, 30.0, 33.0]
    fig = P.rank_histogram(["1", "2-5", ">5"], {"fused": np.array([2, 1, 1])})
    # percentages of 4 queries
    assert _bar_heights(fig.axes[0]) == [50.0, 25.0, 25.0]
    assert fig.axes[0].get_xlabel() == "rank"


def test_sigma_plots():
    rng = np.random.default_rng(1)
    fig = P.sigma_histograms({"videos": rng.normal(1, 0.1, 50), "support sets": rng.normal(1.2, 0.1, 40)})
    assert [t.get_text().split(" (")[0] for t in fig.axes[0].get_legend().get_texts()] == ["videos", "support sets"]
    groups = np.array(["specific"] * 20 + ["ambiguous"] * 10)
    fig = P.values_by_group(rng.normal(size=30), groups, order=["specific", "ambiguous"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["specific\n(n=20)", "ambiguous\n(n=10)"]
    x = rng.integers(3, 8, 40)
    keys = np.unique(x)
    fig = P.scatter_with_means(x, rng.normal(size=40), "length", "sigma",
                               binned=(keys, np.zeros(len(keys)), np.ones(len(keys))))
    assert fig.axes[0].get_xlabel() == "length"


def test_projection_plot_marks_means_and_proxies():
    means = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    proxies = np.random.default_rng(2).normal(size=(12, 2))
    fig = P.projection_plot(means, [0, 0, 1], ["video", "query", "video"], proxies, [0] * 6 + [1] * 6,
                            ["video", "query", "video"] * 4, ["v1", "v2"], explained=[0.6, 0.3])
    ax = fig.axes[0]
    assert len(ax.collections) == 15
    assert ax.get_xlabel() == "PC1 (60% var.)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["v1", "v2"]


def test_word_confidence_heatmaps_label_words_and_fillers():
    queries = [("q1", ["the", "man", "runs"], np.array([0.1, 0.4, 0.5])),
               ("q2", ["a", "kite"], np.array([0.2, 0.8, 0.0]))]
    fig = P.word_confidence_heatmaps(queries, fillers={"the", "a"})
    strips = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in strips] == [["the", "man", "runs"], ["a", "kite"]]
    assert strips[0].get_xticklabels()[0].get_style() == "italic"
    assert strips[0].get_xticklabels()[1].get_style() == "normal"
    # the padding entry of q2 is not drawn
    assert strips[1].images[0].get_array().shape == (1, 2)


def test_word_frame_heatmap_marks_moment_and_best_frames():
    sim = np.zeros((3, 20))
    sim[0, 5] = sim[1, 7] = sim[2, 15] = 1.0
    fig = P.word_frame_heatmap(sim, ["a", "b", "c"], span=(4.0, 9.0), confidence=np.array([0.2, 0.3, 0.5]))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (0.20)", "b (0.30)", "c (0.50)"]
    np.testing.assert_array_equal(ax.collections[0].get_offsets()[:, 0], [5, 7, 15])
    span = [p for p in ax.patches if p.get_label() == "ground-truth moment"][0]
    x0, x1 = sorted(span.get_window_extent().transformed(ax.transData.inverted()).intervalx)
    assert x0 == pytest.approx(3.5) and x1 == pytest.approx(8.5)


def test_two_group_distributions_reference_line():
    fig = P.two_group_distributions({"filler": np.array([0.1, 0.2]), "content": np.array([1.5, 2.0, 1.0])},
                                    "relative confidence", reference=1.0)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[0].startswith("filler (n=2") and texts[-1] == "uniform = 1"


def test_query_explorer_calls_render_for_each_choice(capsys):
    seen = []
    box = P.query_explorer({"first query": "q1", "second": "q2"}, seen.append, description="caption")
    dropdown = box.children[0]
    assert dropdown.description == "caption" and seen == ["q1"]
    dropdown.value = "q2"
    assert seen == ["q1", "q2"]


def _legend_outside(ax) -> bool:
    """The axes' legend box does not overlap the axes' data area (so it cannot cover a curve or bar)."""
    ax.figure.canvas.draw()
    legend, area = ax.get_legend().get_window_extent(), ax.get_window_extent()
    return not legend.overlaps(area)


def test_legends_cover_no_data():
    curves = P.training_curves([0, 1, 2], {f"part{i}": [1.0, 0.5, 0.4] for i in range(8)}, [50.0, 60.0, 70.0],
                               best_epoch=2, lr=[3e-4, 2e-4, 1e-4], hard_start=1)
    assert len(curves.axes) == 3 and curves.axes[2].get_ylabel().startswith("learning rate")
    # the hard-negative epoch is marked on every panel
    assert all(any(list(line.get_xdata()) == [1, 1] for line in ax.lines) for ax in curves.axes)
    bars = P.grouped_bars({"clip": {"R@1": 10.0}, "fused": {"R@1": 12.0}}, "Recall")
    hist = P.two_group_distributions({"filler": np.array([0.9, 1.0]), "content": np.array([1.1, 1.2])}, "x",
                                     reference=1.0)
    ranks = P.rank_histogram(["1", "2-3"], {"fused": np.array([3, 1])}, chance=np.array([50.0, 50.0]))
    for fig in (curves, bars, hist, ranks):
        assert _legend_outside(fig.axes[0]), fig.axes[0].get_title()
    # the chance level is drawn per bin
    assert [list(seg[:, 1]) for seg in ranks.axes[0].collections[-1].get_segments()] == [[50.0, 50.0]] * 2


def test_training_curves_draw_the_total_and_the_validation_chance_level():
    fig = P.training_curves([1, 2], {"total": [2.0, 1.0], "nce": [1.5, 0.8]}, val_sumr=[60.0, 70.0],
                            val_chance=58.0)
    total = [ln for ln in fig.axes[0].lines if ln.get_label() == "total"]
    assert len(total) == 1 and list(total[0].get_ydata()) == [2.0, 1.0] and total[0].get_color() == "black"
    chance = [ln for ln in fig.axes[1].lines if ln.get_label().startswith("random ranking")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [58.0, 58.0]


def test_terms_against_references_draws_each_reference():
    fig = P.terms_against_references([1, 2, 3], {"L_PM": [5.0, 4.9, 4.8], "L_DA": [30.0, 20.0, 10.0]},
                                     {"L_PM": (5.26, "uniform guess")})
    assert len(fig.axes) == 2
    ref = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("uniform guess")]
    assert list(ref[0].get_ydata()) == [5.26, 5.26] and len(fig.axes[1].lines) == 1


# ----------------------------------------------------------------------------- readability (issue #25)


def _every_figure() -> dict[str, Figure]:
    """Each plotting function's output on inputs shaped like the notebooks' (long captions, many words)."""
    rng = np.random.default_rng(0)
    words = ["a", "person", "then", "runs", "with", "the", "ball", "in", "the", "park"] * 3
    families = ["locomotion", "manipulation", "consumption"]
    videos = [(f"v{i:04d}", n, [(5, 35, "runs ball", families[0]), (45, 57, "opens door", families[1]),
                                (70, 110, "eats apple", families[2])][: 1 + i % 3])
              for i, n in enumerate([120, 90, 140])]
    return {
        "split_counts": P.split_counts({s: {"videos": 100, "captions": 400} for s in ("train", "val", "test")}),
        "histogram_grid": P.histogram_grid({f"q{i}": {"train": rng.normal(size=50), "test": rng.normal(size=20)}
                                            for i in range(4)}),
        "moment_timelines": P.moment_timelines(videos, group_title="action family"),
        "training_curves": P.training_curves(list(range(1, 11)), {f"part{i}": list(rng.uniform(0.1, 2, 10))
                                                                  for i in range(8)}, list(rng.uniform(50, 200, 10)),
                                             best_epoch=4, lr=list(np.linspace(1e-4, 1e-5, 10)), hard_start=3),
        "grouped_bars": P.grouped_bars({k: {m: 10.0 for m in ("R@1", "R@5", "R@10", "R@100", "SumR")}
                                        for k in ("clip", "frame", "fused")}, "Recall"),
        "rank_histogram": P.rank_histogram(["1", "2-5", ">5"], {"fused": np.array([2, 1, 1])},
                                           chance=np.array([1.0, 4.0, 95.0])),
        "sigma_histograms": P.sigma_histograms({"videos": rng.normal(1, 0.1, 50), "queries": rng.normal(1, 0.2, 50)}),
        "values_by_group": P.values_by_group(rng.normal(size=30), np.array(["a"] * 15 + ["b"] * 15)),
        "scatter_with_means": P.scatter_with_means(rng.integers(3, 8, 40), rng.normal(size=40), "length", "sigma"),
        "projection_plot": P.projection_plot(rng.normal(size=(4, 2)), [0, 1, 2, 3], ["video"] * 4,
                                             rng.normal(size=(8, 2)), [0, 1, 2, 3] * 2, ["query"] * 8,
                                             ["v1", "v2", "v3", "v4"], explained=[0.5, 0.2]),
        "word_confidence_heatmaps": P.word_confidence_heatmaps(
            [("cap_0001: " + " ".join(words), words, rng.dirichlet(np.ones(len(words))))], fillers={"a", "the"}),
        "word_frame_heatmap": P.word_frame_heatmap(rng.normal(0, 0.3, (len(words), 64)), words, (10, 30),
                                                   rng.dirichlet(np.ones(len(words))), title=" ".join(words)),
        "two_group_distributions": P.two_group_distributions({"filler": rng.normal(0.5, 0.2, 50),
                                                              "content": rng.normal(1.5, 0.2, 50)}, "x", reference=1.0),
        "terms_against_references": P.terms_against_references([1, 2, 3], {"L_PM": [5.0, 4.9, 4.8],
                                                                           "L_DA": [30.0, 20.0, 10.0]},
                                                               {"L_PM": (5.26, "uniform guess")}),
    }


def test_every_figure_text_is_at_least_10_points_where_the_notebook_shows_it():
    """Jupyter shows a figure at its tight bounding box, scaled down to the output area (about 9 in at 100 dpi)
    when wider: a text's displayed size is its size times that shrink; each must stay >= 10 pt."""
    figures = _every_figure()
    assert len(figures) == 14  # every plotting function of ralbook.viz.plots
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        width_in = fig.get_tightbbox(renderer).width  # inches
        shrink = min(1.0, P.DISPLAY_WIDTH_IN / width_in)
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
                 if t.get_visible() and t.get_text().strip()]
        assert texts, name
        small = [(t.get_text()[:30], t.get_fontsize() * shrink) for t in texts if t.get_fontsize() * shrink < 10.0]
        assert not small, f"{name}: {width_in:.1f} in wide, texts below 10 pt as displayed: {small[:5]}"


def test_wrap_label_breaks_at_spaces_only():
    text = "cap_0001: a person then runs with the extraordinarily-long-hyphenated-word in the park"
    for width in (5, 12, 30, 200):
        lines = P.wrap_label(text, width).split("\n")
        assert " ".join(lines) == text  # nothing lost, nothing cut: rejoining the lines gives the text back
        assert all(len(line) <= width or " " not in line for line in lines)  # over-long lines are single words
    assert P.wrap_label("abc", 1) == "abc"


def test_figure_titles_are_wrapped_not_cut():
    words = [f"word{i}" for i in range(40)]
    title = " ".join(words)
    fig = P.word_frame_heatmap(np.zeros((2, 5)), ["a", "b"], title=title)
    shown = fig.axes[0].get_title(loc="left")
    assert "\n" in shown and shown.replace("\n", " ") == title


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0-1) -> CIELAB (D65), the closed-form conversion."""
    c = np.asarray(rgb, dtype=float)
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _min_delta_e(colors) -> float:
    lab = _lab(np.array(colors))
    return min(np.linalg.norm(lab[i] - lab[j]) for i in range(len(lab)) for j in range(i + 1, len(lab)))


def test_distinct_colors_stay_apart():
    """CIE76 dE between every pair: > 40 up to 5 colours (4 videos in 04's projection), > 20 up to 10, all
    different up to 30 (seaborn's own order gave orange and vermillion, dE 25.6, as colours 2 and 4)."""
    for n in range(2, 6):
        assert _min_delta_e(P.distinct_colors(n)) > 40, n
    for n in range(6, 11):
        assert _min_delta_e(P.distinct_colors(n)) > 20, n
    for n in (15, 20, 30):
        assert len(set(P.distinct_colors(n))) == n


def test_shared_bin_edges_line_up_across_splits():
    train, test = np.array([1, 2, 2, 3, 9]), np.array([4, 5])
    edges = P.shared_bin_edges([train, test], discrete=True)
    np.testing.assert_array_equal(edges, np.arange(0.5, 10.5, 1.0))
    fig = P.histogram_grid({"frames": {"train": train.astype(float) * 1.7, "test": test.astype(float) * 0.3}})
    ax = fig.axes[0]
    # both splits' step outlines start at the same left edge and end at the same right edge
    xs = [poly.get_paths()[0].vertices[:, 0] for poly in ax.collections]
    assert len(xs) == 2 and xs[0].min() == pytest.approx(xs[1].min()) and xs[0].max() == pytest.approx(xs[1].max())


def test_word_confidence_scale_is_centred_on_the_uniform_share():
    fig = P.word_confidence_heatmaps([("q", ["a", "b", "c", "d"], np.array([0.25, 0.25, 0.1, 0.4]))])
    image = fig.axes[0].images[0]
    np.testing.assert_allclose(image.get_array()[0], [1.0, 1.0, 0.4, 1.6])  # g x 4 words
    assert image.norm(1.0) == pytest.approx(0.5)  # uniform share = middle of the diverging map
    assert image.get_cmap().name == "RdBu_r"


def test_word_frame_heatmap_centres_signed_cosines_at_zero():
    sim = np.array([[-0.2, 0.6], [0.1, 0.3]])
    image = P.word_frame_heatmap(sim, ["a", "b"]).axes[0].images[0]
    assert image.norm(0.0) == pytest.approx(0.5)
    positive = P.word_frame_heatmap(np.abs(sim), ["a", "b"]).axes[0].images[0]
    assert positive.get_cmap().name == "magma"


def test_moment_labels_fit_their_bars_and_colours_mean_the_group():
    videos = [("v1", 100, [(0, 40, "runs ball", "locomotion"), (50, 53, "opens door", "manipulation"),
                           (60, 90, "jumps rope", "locomotion")])]
    fig = P.moment_timelines(videos, group_title="action family")
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    written = {t.get_text().replace("\n", " "): t for t in ax.texts}
    assert set(written) == {"runs ball", "jumps rope"}  # the 3-frame bar is too short for its label
    bars = {c.get_paths()[0].vertices[:, 0].min(): c for c in ax.collections[1:]}
    for text in written.values():
        box = text.get_window_extent(renderer)
        x = text.get_position()[0]
        bar = [c for c in ax.collections[1:] if c.get_paths()[0].vertices[:, 0].min() < x
               < c.get_paths()[0].vertices[:, 0].max()][0]
        assert bar.get_window_extent(renderer).contains(box.x0 + 0.01, box.y0 + 0.01)
        assert bar.get_window_extent(renderer).contains(box.x1 - 0.01, box.y1 - 0.01)
    assert len(bars) == 3
    colours = [tuple(c.get_facecolor()[0]) for c in ax.collections[1:]]
    assert colours[0] == colours[2] != colours[1]  # same family, same colour
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["locomotion", "manipulation"]
    assert ax.get_legend().get_title().get_text() == "action family"
