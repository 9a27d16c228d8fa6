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


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0-1) -> CIELAB (D65), the closed-form conversion."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def test_distinct_colors_are_far_apart():
    """seaborn's colorblind entries 1 and 3 (orange, vermillion) are 26 apart in CIELAB; the reordered
    palette keeps the first seven at least 35 apart, and the projection uses it."""
    import itertools

    import seaborn as sns

    base = _lab(np.array(sns.color_palette("colorblind", 10)))
    assert np.linalg.norm(base[1] - base[3]) < 30
    for n in range(2, 8):
        lab = _lab(np.array(P.distinct_colors(n)))
        assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(lab, 2)) >= 35
    assert len(P.distinct_colors(12)) == 12
    means = np.zeros((4, 2))
    fig = P.projection_plot(means, [0, 1, 2, 3], ["video"] * 4, means, [0, 1, 2, 3], ["video"] * 4,
                            ["a", "b", "c", "d"])
    faces = [tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in fig.axes[0].collections[4:]]
    assert faces == [tuple(np.round(c, 3)) for c in P.distinct_colors(4)]
