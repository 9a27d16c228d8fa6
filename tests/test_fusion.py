"""studies.fusion and studies.multigt: the measurements behind 03's sentences, against brute force and hand counts,
and the wording of evaluation_text / quickstart_text on constructed inputs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ralbook import stats
from ralbook.errors import DataError
from ralbook.studies import fusion, multigt, report


def brute_rank(row: np.ndarray, relevant: list[int]) -> int:
    """Rank of the best relevant video by sorting (stable: ties by video index), 1-based."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    return 1 + min(order.index(j) for j in relevant)


def brute_sumr(ranks: list[int]) -> float:
    return sum(100.0 * np.mean([r <= k for r in ranks]) for k in (1, 5, 10, 100))


@pytest.fixture
def scores():
    rng = np.random.default_rng(3)
    clip = rng.normal(size=(40, 12)).round(1)  # rounded: ties occur
    frame = rng.normal(size=(40, 12)).round(1)
    relevant = np.full((40, 2), -1)
    relevant[:, 0] = np.arange(40) % 12
    relevant[::5, 1] = (np.arange(0, 40, 5) + 3) % 12  # every fifth query has a second relevant video
    return clip, frame, relevant


def rel_list(relevant: np.ndarray, i: int) -> list[int]:
    return [int(j) for j in relevant[i] if j >= 0]


def test_ranks_against_matches_a_sort(scores):
    clip, _, relevant = scores
    got = fusion.ranks_against(clip, relevant)
    assert list(got) == [brute_rank(clip[i], rel_list(relevant, i)) for i in range(40)]
    with pytest.raises(DataError, match="same n queries"):
        fusion.ranks_against(clip, relevant[:3])


def test_alpha_sweep_against_brute_force(scores):
    clip, frame, relevant = scores
    points = fusion.alpha_sweep(clip, frame, relevant, model_alpha=0.7, alphas=(0.0, 0.3, 0.7, 1.0), n_boot=200)
    for p in points:
        fused = p.alpha * clip + (1 - p.alpha) * frame
        ranks = [brute_rank(fused[i], rel_list(relevant, i)) for i in range(40)]
        assert p.value == pytest.approx(brute_sumr(ranks))
        ref = [brute_rank(0.7 * clip[i] + 0.3 * frame[i], rel_list(relevant, i)) for i in range(40)]
        assert p.vs_model.estimate == pytest.approx(brute_sumr(ranks) - brute_sumr(ref))
    at_trained = points[2]
    assert at_trained.vs_model.estimate == 0.0 and at_trained.vs_model.verdict == "undecided"
    # the ends of the grid are the branches alone
    alone = {name: brute_sumr([brute_rank(s[i], rel_list(relevant, i)) for i in range(40)])
             for name, s in (("clip", clip), ("frame", frame))}
    assert points[-1].value == pytest.approx(alone["clip"]) and points[0].value == pytest.approx(alone["frame"])
    assert fusion.best_sweep_point(points).value == max(p.value for p in points)
    assert fusion.ALPHA_GRID[0] == 0.0 and fusion.ALPHA_GRID[-1] == 1.0 and len(fusion.ALPHA_GRID) == 11


def test_branch_shares_hand_count():
    clip = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    frame = np.array([2, 2, 1, 9, 5, 1, 8, 8, 1, 11])
    shares = fusion.branch_shares(clip, frame, n_boot=500)
    # clip better: queries 0, 3, 6, 9 -> 40%; frame better: 2, 5, 8 -> 30%; tie: 1, 4, 7 -> 30%
    assert shares["clip better"].value == pytest.approx(40.0)
    assert shares["frame better"].value == pytest.approx(30.0)
    assert shares["tie"].value == pytest.approx(30.0)
    assert all(e.low <= e.value <= e.high for e in shares.values())
    with pytest.raises(DataError):
        fusion.branch_shares(clip, frame[:3])


def test_branch_comparisons_are_paired_and_named():
    ranks = {"fused": np.array([1, 1, 2, 5]), "clip": np.array([1, 3, 2, 5]), "frame": np.array([4, 9, 2, 200])}
    out = fusion.branch_comparisons(ranks, n_boot=200)
    assert [(c.metric, c.b) for c in out] == [("SumR", "the clip branch"), ("SumR", "the frame branch"),
                                              ("R@1", "the clip branch"), ("R@1", "the frame branch")]
    # fused vs clip R@1: 2 of 4 vs 1 of 4 -> +25 points
    assert out[2].estimate == pytest.approx(25.0) and out[0].paired


def test_peak_place_every_case():
    moments = [(0, 10), (10, 20), (25, 30)]
    shares = [False, True, False]  # moment 1 shares a concept with the own moment 0
    assert fusion.peak_place(3, moments, 0, shares) == "own moment"
    assert fusion.peak_place(12, moments, 0, shares) == "other moment sharing a concept"
    assert fusion.peak_place(27, moments, 0, shares) == "other moment, no shared concept"
    assert fusion.peak_place(22, moments, 0, shares) == "background"
    # overlapping moments: the own one wins
    assert fusion.peak_place(5, [(0, 10), (4, 8)], 1, [True, False]) == "own moment"
    with pytest.raises(DataError):
        fusion.peak_place(1, moments, 5, shares)


def test_place_shares_are_caption_means():
    shares = np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.25, 0.75]])
    out = fusion.place_shares(shares, n_boot=200)
    assert out["own moment"].value == pytest.approx(50.0)
    assert out["other moment sharing a concept"].value == pytest.approx(50.0 / 3)
    assert out["background"].value == pytest.approx(25.0)


def test_gap_by_bins_by_hand():
    covariate = np.array([1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9])
    gap = np.array([0, 0, 0, 0, 10, 10, 10, 10, 100, 100, 100, 100.0])
    bins, comp = fusion.gap_by_bins(gap, covariate, "length", n_bins=3, n_boot=200)
    assert len(bins) == 3
    members = [(b.low, b.high) for b in bins]
    assert members[0][0] == 1 and members[-1][1] == 9
    # brute force: the bins partition the queries, in covariate order, each mean is that of its members
    total = 0
    for b in bins:
        inside = (covariate >= b.low) & (covariate <= b.high)
        total += inside.sum()
        assert b.gap.value == pytest.approx(gap[inside].mean())
    assert total == covariate.size
    assert comp is not None and comp.estimate == pytest.approx(gap[covariate >= bins[-1].low].mean()
                                                               - gap[covariate <= bins[0].high].mean())
    one, none_ = fusion.gap_by_bins(np.ones(5), np.full(5, 3.0), "length")
    assert len(one) == 1 and none_ is None


def test_per_query_gap_means_are_the_branch_metrics():
    clip, frame = np.array([1, 4, 20, 150]), np.array([3, 4, 1, 101])
    gap = fusion.per_query_gap(clip, frame)
    assert gap.mean() == pytest.approx(brute_sumr(list(clip)) - brute_sumr(list(frame)))


# ----------------------------------------------------------------------------- multi-ground-truth


def test_truthful_recall_against_a_hand_count():
    video_ids = ["v0", "v1", "v2", "v3"]
    cap_ids = ["c0", "c1", "c2"]
    own = ["v0", "v1", "v2"]
    truthful = {"c0": ["v0", "v3"], "c1": ["v2"]}  # c1's file omits its own video: it is added
    scores = np.array([[0.1, 0.2, 0.3, 0.9],   # c0: own v0 rank 4, truthful v3 rank 1
                       [0.5, 0.4, 0.6, 0.0],   # c1: own v1 rank 3, truthful v2 rank 1
                       [0.9, 0.1, 0.5, 0.2]])  # c2: own v2 rank 2, nothing else truthful
    relevant = multigt.truthful_relevant(cap_ids, own, video_ids, truthful)
    assert fusion.ranks_against(scores, relevant).tolist() == [1, 1, 2]
    standard = multigt.truthful_relevant(cap_ids, own, video_ids, {})
    assert fusion.ranks_against(scores, standard).tolist() == [4, 3, 2]
    kinds = multigt.top1_kinds(["v3", "v2", "v0"], own, truthful, cap_ids)
    assert kinds == ["truthful, not annotated", "truthful, not annotated", "not truthful"]
    assert multigt.top1_kinds(["v0"], ["v0"], {}, ["c"]) == ["annotated"]


def test_ideal_recall_closed_form():
    # m = 1: always first; m = 4: R@1 1/4, R@5 1; m = 20: R@1 1/20, R@5 1/4, R@10 1/2, R@100 1
    out = multigt.ideal_recall([1, 4, 20], n_videos=200)
    assert out["R@1"] == pytest.approx(100 * (1 + 1 / 4 + 1 / 20) / 3)
    assert out["R@5"] == pytest.approx(100 * (1 + 1 + 1 / 4) / 3)
    assert out["R@10"] == pytest.approx(100 * (1 + 1 + 1 / 2) / 3)
    assert out["R@100"] == pytest.approx(100.0)
    assert out["SumR"] == pytest.approx(sum(out[f"R@{k}"] for k in (1, 5, 10, 100)))
    # brute force for one caption: every order of m = 3 truthful videos equally likely
    m = 3
    hits = [perm.index(0) < 1 for perm in itertools.permutations(range(m))]
    assert multigt.ideal_recall([m], 50)["R@1"] == pytest.approx(100 * np.mean(hits))
    with pytest.raises(DataError):
        multigt.ideal_recall([0], 10)


# ----------------------------------------------------------------------------- wording


def metrics(clip: float, frame: float, fused: float) -> dict:
    row = lambda s: {"R@1": 20.0, "R@5": 40.0, "R@10": 50.0, "R@100": 90.0, "SumR": s}  # noqa: E731
    return {"clip": row(clip), "frame": row(frame), "fused": row(fused)}


def constructed(n: int = 400, shift: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(1, 200, size=n)
    other = base.copy()
    other[:shift] = 1  # `shift` queries moved to rank 1 in the second ranking
    return other, base


def test_a_tiny_difference_never_reads_as_better():
    a, b = constructed(shift=1)  # one query of 400 changes
    c = stats.compare_rankings(a, b, "SumR", name_a="the fused score", name_b="the clip branch", n_boot=500)
    text = report.evaluation_text(metrics(100, 50, 100.3), 200, 40, 0.7, branches=[c])
    assert "better" not in text and "worse" not in text and "cannot be told apart" in text


def test_swapping_the_inputs_swaps_the_words():
    a, b = constructed(shift=120)
    c = stats.compare_rankings(a, b, "SumR", name_a="the fused score", name_b="the clip branch", n_boot=500)
    text = report.evaluation_text(metrics(100, 50, 130), 200, 40, 0.7, branches=[c])
    assert "The fused score is better than the clip branch on SumR" in text
    c2 = stats.compare_rankings(b, a, "SumR", name_a="the clip branch", name_b="the fused score", n_boot=500)
    text2 = report.evaluation_text(metrics(100, 50, 130), 200, 40, 0.7, branches=[c2])
    assert "The clip branch is worse than the fused score on SumR" in text2


def test_branch_shares_wording_needs_both_shares_above_zero():
    clip_ranks = np.array([1, 2, 3, 4] * 50)
    only_clip = fusion.branch_shares(clip_ranks, clip_ranks + 1, n_boot=200)  # frame never better
    text = report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.7, shares=only_clip)
    assert "no evidence that the branches make different mistakes" in text
    both = fusion.branch_shares(clip_ranks, np.array([2, 1, 3, 5] * 50), n_boot=200)
    text = report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.7, shares=both)
    assert "do make different mistakes" in text and "25% (95% CI" in text


def test_sweep_and_multi_ground_truth_sentences():
    rng = np.random.default_rng(0)
    clip = rng.normal(size=(300, 30))
    frame = rng.normal(size=(300, 30))
    relevant = np.arange(300)[:, None] % 30
    clip[np.arange(300), relevant[:, 0]] += 1.5  # the clip branch knows the answer, the frame branch is noise
    points = fusion.alpha_sweep(clip, frame, relevant, model_alpha=0.5, n_boot=300)
    best = fusion.best_sweep_point(points)
    assert best.alpha >= 0.7  # pure noise in frame: more clip weight ranks better
    text = report.evaluation_text(metrics(100, 50, 90), 30, 4, 0.5, sweep=points)
    assert f"highest at alpha {best.alpha:g}" in text and "the configured alpha 0.5" in text
    assert "is better than the configured alpha 0.5 on SumR" in text
    # the best of 11 weights, picked on the same queries: the text says its interval is optimistic
    assert f"best of {len(points)} on these same queries" in text and "validation split" in text
    multi = {"standard": {"R@1": 20.0, "SumR": 100.0}, "truthful": {"R@1": 30.0, "SumR": 120.0},
             "ideal": {"R@1": 80.0, "SumR": 350.0}, "n_queries": 711, "n_truthful_not_annotated": 42,
             "n_not_truthful": 500}
    text = report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.5, multi=multi)
    assert "R@1 is 30.0" in text and "standard R@1 20.0" in text and "ideal model reaches standard R@1 80.0" in text
    assert "42 have a top-1 video that truly matches" in text and "500 have a top-1 that does not match" in text


def test_frame_branch_trends_follow_the_verdict():
    rng = np.random.default_rng(1)
    low, high = rng.normal(0, 10, 300), rng.normal(30, 10, 300)
    grows = stats.compare_seeds(high, low, paired=False, unit="queries")
    flat = stats.compare_seeds(rng.normal(0, 10, 300), rng.normal(0, 10, 300), paired=False, unit="queries")
    text = report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.5, frame={"length": grows, "filler": flat})
    assert "falls further behind the clip branch on long videos" in text
    assert "cannot tell whether the clip-minus-frame SumR gap between the captions with most and fewest" in text
    assert "per group" in text
    assert "not causes" in text
    shrinks = grows.swapped()
    assert "on short videos" in report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.5, frame={"length": shrinks})


def test_quickstart_says_above_chance_only_from_the_interval():
    chance = report.chance_sumr(200)
    above = stats.Estimate("fused", "SumR", "queries", 700, 90.0, 80.0, 100.0, 0.95, "bootstrap", 5.0)
    close = stats.Estimate("fused", "SumR", "queries", 700, 60.0, 50.0, 70.0, 0.95, "bootstrap", 5.0)
    assert "is above chance" in report.quickstart_text(metrics(1, 1, 90), 200, 700, 3, "q", 5, "x", None, above)
    text = report.quickstart_text(metrics(1, 1, 60), 200, 700, 3, "q", 5, "x", None, close)
    assert "cannot be told from chance" in text and f"chance {chance:.0f}" in text


def test_read_truthful_reads_the_generated_file(tmp_path):
    folder = tmp_path / "demo" / "GroundTruth"
    folder.mkdir(parents=True)
    (folder / "relevant_test.json").write_text('{"c0": ["v0", "v3"]}')
    assert multigt.read_truthful(tmp_path, "demo", "test") == {"c0": ["v0", "v3"]}
    assert multigt.read_truthful(tmp_path, "demo", "val") is None


def test_fusion_sweep_bars_cross_the_reference_line_exactly_when_undecided():
    import matplotlib.pyplot as plt

    from ralbook.viz import plots

    fig = plots.fusion_sweep([0.0, 0.5, 1.0], [100.0, 120.0, 118.0], [-30.0, 0.0, -5.0], [-10.0, 0.0, 1.0], 0.5)
    ax = fig.axes[0]
    bars = [c for c in ax.collections if c.get_segments()]
    segments = [s for s in bars[0].get_segments()]  # one vertical segment per alpha
    spans = sorted((float(s[0][0]), float(min(s[:, 1])), float(max(s[:, 1]))) for s in segments)
    # alpha 0: 120 + [-30, -10] = [90, 110] (below the line at 120); alpha 1: 120 + [-5, 1] = [115, 121] (crosses)
    assert spans[0] == pytest.approx((0.0, 90.0, 110.0)) and spans[2] == pytest.approx((1.0, 115.0, 121.0))
    plt.close(fig)


def test_places_vs_chance_is_paired_over_captions():
    words = np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]])
    frames = np.array([[0.5, 0.2, 0.2, 0.1], [0.3, 0.3, 0.3, 0.1], [0.2, 0.2, 0.2, 0.4]])
    out = fusion.places_vs_chance(words, frames, n_boot=200)
    for k, place in enumerate(fusion.PEAK_PLACES):
        assert out[place].estimate == pytest.approx(100 * (words[:, k] - frames[:, k]).mean())
        assert out[place].paired and out[place].unit == "captions"
    with pytest.raises(DataError):
        fusion.places_vs_chance(words, frames[:2])


def test_words_pulled_to_sharing_moments_are_said_only_from_the_interval():
    rng = np.random.default_rng(2)
    n = 300
    frames = np.tile([0.4, 0.2, 0.3, 0.1], (n, 1))
    pulled = frames + np.array([0.0, 0.15, -0.1, -0.05]) + rng.normal(0, 0.02, (n, 4))
    noise = rng.normal(0, 0.02, (n // 2, 4))
    same = frames + np.concatenate([noise, -noise])  # mean difference exactly 0
    text = report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.5,
                                  frame={"vs_chance": fusion.places_vs_chance(pulled, frames, n_boot=300)})
    assert "in another moment sharing a concept more often than a random frame lies there" in text
    text = report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.5,
                                  frame={"vs_chance": fusion.places_vs_chance(same, frames, n_boot=300)})
    assert "more often" not in text and "less often" not in text and "cannot tell content words" in text
    # the comparison on the captions whose video has a sharing moment replaces the all-caption one
    both = {"vs_chance": fusion.places_vs_chance(same, frames, n_boot=300),
            "lured": fusion.places_vs_chance(pulled, frames, n_boot=300)["other moment sharing a concept"]}
    text = report.evaluation_text(metrics(100, 50, 90), 200, 4, 0.5, frame=both)
    assert "in another moment sharing a concept more often than a random frame lies there" in text
