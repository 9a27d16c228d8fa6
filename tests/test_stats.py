"""The statistics layer: intervals against closed forms and brute force, coverage and power by simulation,
and the wording's three outcomes (better / worse / undecided), including swapped inputs and flipped AUCs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from ralbook.errors import ConfigError, DataError
from ralbook.stats import (Comparison, Estimate, bootstrap_mean, compare_aucs, compare_rankings, compare_seeds,
                           describe, describe_detectable, describe_estimate, describe_vs_chance, detectable_difference, fast_auc,
                           paired_bootstrap, ranking_values, single_mean, summary_line)

Z80 = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)  # 2.8016: the bootstrap designs' detectable multiplier


def pairwise_auc(scores, labels) -> float:
    """Brute force: every (positive, negative) pair, a tie counts one half."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def swap_names(text: str, a: str, b: str) -> str:
    return text.replace(a, "\0").replace(b, a).replace("\0", b)


# ----------------------------------------------------------------------------- paired bootstrap


def test_constant_difference_gives_zero_width_interval_at_that_value():
    x = np.random.default_rng(0).normal(size=300)
    c = paired_bootstrap(x + 0.3, x, name_a="A", name_b="B")
    assert c.estimate == pytest.approx(0.3, abs=1e-12)
    assert c.low == pytest.approx(0.3, abs=1e-12) and c.high == pytest.approx(0.3, abs=1e-12)
    assert c.se == pytest.approx(0.0, abs=1e-12)
    assert c.verdict == "better"
    assert describe(c).startswith("A is better than B on value by 0.30")


def test_identical_inputs_are_undecided_and_never_worded_better_or_worse():
    x = np.random.default_rng(1).integers(1, 500, 400)
    for metric in ("SumR", "MRR", "R@1"):
        c = compare_rankings(x, x, metric, name_a="A", name_b="B")
        assert (c.estimate, c.low, c.high) == (0.0, 0.0, 0.0)
        assert c.verdict == "undecided" and c.needed_n() is None
        text = describe(c)
        assert "better" not in text and "worse" not in text
        assert "cannot be told apart" in text


def test_bootstrap_interval_matches_an_explicit_resampling_loop():
    """Small n: one chunk, so an explicit loop over the same index draws must give the same percentiles."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=30), rng.normal(size=30)
    c = paired_bootstrap(a, b, n_boot=400, seed=7, level=0.9)
    idx = np.random.default_rng(7).integers(0, 30, size=(400, 30))
    diffs = np.array([a[i].mean() - b[i].mean() for i in idx])
    assert c.low == pytest.approx(np.quantile(diffs, 0.05), abs=1e-12)
    assert c.high == pytest.approx(np.quantile(diffs, 0.95), abs=1e-12)
    assert c.se == pytest.approx(diffs.std(ddof=1), abs=1e-12)
    assert c.estimate == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert "paired bootstrap over 30 items, 400 resamples, seed 7" in c.method


def test_other_statistics_and_determinism():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=200), rng.normal(size=200)
    c = paired_bootstrap(a, b, np.median)
    assert c.estimate == pytest.approx(np.median(a) - np.median(b), abs=1e-12)
    assert c == paired_bootstrap(a, b, np.median)  # seeded
    assert (c.low, c.high) != (paired_bootstrap(a, b, np.median, seed=1).low,
                               paired_bootstrap(a, b, np.median, seed=1).high)


def test_chunked_resampling_of_many_items_runs_and_centres_on_the_estimate():
    """n = 5000 is resampled in several chunks; the mean of a paired difference with sd 1 has SE 1/sqrt(n)."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=5000)
    b = a - 0.2 + rng.normal(size=5000)
    c = paired_bootstrap(a, b, n_boot=2000)
    assert c.low < c.estimate < c.high
    assert c.se == pytest.approx(np.std(a - b, ddof=1) / math.sqrt(5000), rel=0.1)  # 2000 resamples: ~3% error


def test_one_item_has_no_interval():
    c = paired_bootstrap([1.0], [0.0])
    assert c.verdict == "undecided" and math.isinf(c.low) and math.isinf(c.high)
    assert "no interval" in describe(c)


# ----------------------------------------------------------------------------- rankings and wording


def test_ranking_values_match_the_metric_definitions():
    ranks = np.array([1, 2, 5, 6, 10, 11, 100, 101, 3000])
    for k in (1, 5, 10, 100):
        expected = [100.0 if r <= k else 0.0 for r in ranks]
        assert ranking_values(ranks, f"R@{k}").tolist() == expected
    assert ranking_values(ranks, "SumR").tolist() == [400, 300, 300, 200, 200, 100, 100, 0, 0]
    assert ranking_values(ranks, "MRR") == pytest.approx([1 / r for r in ranks])
    c = compare_rankings(ranks, np.full(9, 1000), "SumR")
    assert c.value_a == pytest.approx(1600 / 9) and c.value_b == 0.0


def test_a_difference_of_001_sumr_never_reads_better():
    """10,000 queries, one moved from rank 2 to rank 1: SumR +0.01. A resample omits that query with
    probability ~e^-1 > 2.5%, so the interval's low end is exactly 0: undecided (no chance involved)."""
    rng = np.random.default_rng(4)
    ranks_b = rng.integers(2, 300, 10_000)
    ranks_a = ranks_b.copy()
    ranks_a[17] = 1
    ranks_b[17] = 2
    c = compare_rankings(ranks_a, ranks_b, "SumR", name_a="A", name_b="B")
    assert c.estimate == pytest.approx(0.01)
    assert c.low == 0.0 and c.verdict == "undecided"
    assert "better" not in describe(c) and "cannot be told apart" in describe(c)
    # noisy paired per-query values whose mean difference is exactly 0.01 (SE ~0.02 at 2000 queries)
    base = rng.normal(100.0, 50.0, 2000)
    noise = rng.normal(0.0, 1.0, 2000)
    c2 = paired_bootstrap(base + noise - noise.mean() + 0.01, base, metric="SumR", unit="queries")
    assert c2.estimate == pytest.approx(0.01)
    assert c2.verdict == "undecided" and "better" not in describe(c2)


def test_large_difference_reads_better_and_swapping_swaps_the_words():
    rng = np.random.default_rng(6)
    ranks_b = rng.integers(1, 40, 500)
    ranks_a = np.maximum(1, ranks_b - rng.integers(0, 6, 500))  # never worse, often better
    ab = compare_rankings(ranks_a, ranks_b, "SumR", name_a="RAL", name_b="GMMFormer v2")
    ba = compare_rankings(ranks_b, ranks_a, "SumR", name_a="GMMFormer v2", name_b="RAL")
    assert ab.verdict == "better" and ba.verdict == "worse"
    assert ba.estimate == -ab.estimate
    assert ba.low == pytest.approx(-ab.high, abs=1e-12) and ba.high == pytest.approx(-ab.low, abs=1e-12)
    text = describe(ab)
    assert text.startswith("RAL is better than GMMFormer v2 on SumR by ")
    assert "paired over 500 queries" in text
    assert describe(ba) == swap_names(text, "RAL", "GMMFormer v2").replace("is better than", "is worse than")
    assert describe(ab.swapped()) == describe(ba)


def test_undecided_swap_negates_the_difference():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=50), rng.normal(size=50)
    ab = paired_bootstrap(a, b, name_a="A", name_b="B", n_boot=500)
    ba = paired_bootstrap(b, a, name_a="B", name_b="A", n_boot=500)
    assert ab.verdict == ba.verdict == "undecided"
    t_ab, t_ba = describe(ab, digits=3), describe(ba, digits=3)
    assert t_ab.startswith("A and B cannot be told apart") and t_ba.startswith("B and A cannot be told apart")
    assert f"difference A - B {ab.estimate:+.3f}" in t_ab and f"difference B - A {-ab.estimate:+.3f}" in t_ba
    assert f"about {ab.needed_n():,} items would resolve" in t_ab


def test_lower_is_better_metrics_turn_the_verdict():
    """AURC-like: a is lower on every seed, so a is better although a - b < 0."""
    c = compare_seeds([0.10, 0.12, 0.11, 0.13], [0.20, 0.21, 0.23, 0.22], name_a="RAL", name_b="base",
                      metric="AURC", higher_is_better=False)
    assert c.estimate < 0 and c.high < 0 and c.verdict == "better"
    text = describe(c, digits=3)
    assert text.startswith("RAL is better than base on AURC by 0.100 (95% CI ")
    assert describe(c.swapped(), digits=3).startswith("base is worse than RAL on AURC by 0.100 (95% CI ")


def test_negligible_margin_is_off_by_default_and_states_equivalence():
    x = np.random.default_rng(9).normal(size=400)
    noise = np.random.default_rng(10).normal(0, 0.01, 400)
    c = paired_bootstrap(x + noise - noise.mean(), x, name_a="A", name_b="B")  # mean difference 0, CI ~+-0.001
    assert c.verdict == "undecided" and "equivalent" not in describe(c)
    assert "A and B are equivalent on value within ±0.1" in describe(c, negligible=0.1, digits=1)
    assert "equivalent" not in describe(c, negligible=1e-6)  # interval wider than the margin
    decided = paired_bootstrap(x + 0.05, x)
    assert "smaller than the negligible margin" in describe(decided, negligible=0.1)


def test_summary_line():
    c = Comparison("A", "B", "SumR", "queries", 10, 1.23, -0.31, 2.64, 0.95, "m", 0.7, 1.96, 5.0, 3.77)
    assert summary_line(c, digits=1) == "+1.2 [-0.3, 2.6]"
    assert summary_line(c.swapped(), digits=1) == "-1.2 [-2.6, 0.3]"


# ----------------------------------------------------------------------------- AUC


def test_fast_auc_matches_the_pair_count_with_ties():
    rng = np.random.default_rng(11)
    for _ in range(5):
        y = rng.integers(0, 2, 60)
        y[:2] = [0, 1]
        s = rng.integers(0, 6, 60).astype(float)  # many ties
        assert fast_auc(s, y) == pytest.approx(pairwise_auc(s, y), abs=1e-12)


def test_compare_aucs_point_estimate_is_the_brute_force_difference():
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 80)
    sa = y + rng.normal(0, 1.0, 80)
    sb = np.round(rng.normal(0, 1.0, 80), 1)
    c = compare_aucs(sa, sb, y, n_boot=300)
    assert c.value_a == pytest.approx(pairwise_auc(sa, y)) and c.value_b == pytest.approx(pairwise_auc(sb, y))
    assert c.estimate == pytest.approx(pairwise_auc(sa, y) - pairwise_auc(sb, y))


def test_a_baseline_below_half_is_compared_in_its_informative_direction():
    """Baseline AUC exactly 0.3 (every positive scores 2.5 against negatives 0..9): compared as 0.7."""
    labels = np.array([1] * 10 + [0] * 10)
    baseline = np.concatenate([np.full(10, 2.5), np.arange(10.0)])
    assert pairwise_auc(baseline, labels) == pytest.approx(0.3)
    sigma = np.concatenate([np.arange(10.0) + 1.5, np.arange(10.0)])  # AUC 0.955 (brute force in the assertion)
    plain = compare_aucs(sigma, baseline, labels, name_a="sigma", name_b="length", n_boot=300)
    turned = compare_aucs(sigma, baseline, labels, name_a="sigma", name_b="length", informative_direction="b",
                          n_boot=300)
    assert not plain.flipped_b and plain.value_b == pytest.approx(0.3)
    assert turned.flipped_b and not turned.flipped_a and turned.value_b == pytest.approx(0.7)
    assert turned.estimate == pytest.approx(pairwise_auc(sigma, labels) - 0.7)
    text = describe(turned, digits=3)
    assert "length is taken in its informative direction" in text
    assert "its AUC 0.300 is below 0.5, so it is compared as 1 - AUC = 0.700" in text
    assert "informative direction" not in describe(plain)
    assert "informative direction" in describe(turned.swapped())  # the flip travels with the name


def test_direction_of_the_claim_is_not_flipped_unless_asked():
    labels = np.array([1] * 10 + [0] * 10)
    low = np.concatenate([np.zeros(10), np.ones(10)])  # AUC 0
    c = compare_aucs(low, low, labels, informative_direction="b", n_boot=100)
    assert not c.flipped_a and c.flipped_b and c.value_a == 0.0 and c.value_b == 1.0
    both = compare_aucs(low, low, labels, informative_direction=True, n_boot=100)
    assert both.flipped_a and both.flipped_b and both.estimate == 0.0


def test_constructed_better_auc_reads_better():
    rng = np.random.default_rng(13)
    y = np.repeat([0, 1], 150)
    good = y + rng.normal(0, 0.5, 300)  # AUC ~0.92
    weak = y + rng.normal(0, 3.0, 300)  # AUC ~0.6
    c = compare_aucs(good, weak, y, name_a="sigma", name_b="entropy")
    assert c.verdict == "better" and describe(c).startswith("sigma is better than entropy on AUC by ")
    assert compare_aucs(weak, good, y).verdict == "worse"


def test_auc_errors_name_the_problem():
    with pytest.raises(DataError, match="both labels"):
        compare_aucs([1, 2, 3], [1, 2, 3], [1, 1, 1])
    with pytest.raises(DataError, match="0 or 1"):
        fast_auc([1, 2, 3], [0, 1, 2])
    with pytest.raises(ConfigError, match="informative_direction"):
        compare_aucs([1, 2], [1, 2], [0, 1], informative_direction="yes")


# ----------------------------------------------------------------------------- seeds


def test_paired_seeds_match_the_hand_computed_t_interval():
    a = np.array([190.1, 185.3, 193.0, 188.2])
    b = np.array([184.0, 186.1, 185.5, 181.0])
    c = compare_seeds(a, b, name_a="RAL", name_b="GMMFormer v2", metric="SumR")
    d = a - b
    half = sps.t.ppf(0.975, 3) * d.std(ddof=1) / 2.0
    assert c.estimate == pytest.approx(d.mean())
    assert (c.low, c.high) == pytest.approx((d.mean() - half, d.mean() + half))
    ci = sps.ttest_rel(a, b).confidence_interval()
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high))
    assert c.df == 3 and "paired t over 4 seeds" in c.method


def test_welch_matches_scipy():
    a = np.array([10.0, 12.0, 11.5])
    b = np.array([9.0, 7.5, 10.0, 8.2, 9.9])
    c = compare_seeds(a, b, paired=False)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high))
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 5
    assert c.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 4))
    assert "unpaired, 3 and 5 seeds" in describe(c)


def test_two_seeds_give_a_wide_interval_and_one_seed_none():
    c = compare_seeds([120.0, 124.0], [118.0, 119.0])
    d = np.array([2.0, 5.0])
    half = sps.t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2)  # 12.7 x SE
    assert (c.low, c.high) == pytest.approx((3.5 - half, 3.5 + half))
    assert c.verdict == "undecided"  # both seeds favour A, by more than their spread: still not evidence
    one = compare_seeds([120.0], [118.0], name_a="A", name_b="B")
    assert one.verdict == "undecided" and one.low == -math.inf and one.high == math.inf
    assert one.needed_n() is None and math.isinf(one.detectable)
    text = describe(one)
    assert "cannot be told apart" in text and "no interval can be computed" in text and "better" not in text
    assert compare_seeds([1.0, 2.0], [0.0], paired=False).verdict == "undecided"
    with pytest.raises(DataError, match="got 2 and 3"):
        compare_seeds([1.0, 2.0], [1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- detectable and needed_n


def test_detectable_and_needed_n_closed_forms_bootstrap():
    rng = np.random.default_rng(14)
    a = rng.normal(size=300)
    c = paired_bootstrap(a + rng.normal(0.05, 1.0, 300), a, unit="queries", n_boot=500)
    assert c.detectable == pytest.approx(Z80 * c.se)
    assert Z80 == pytest.approx(2.8016, abs=1e-4)
    assert c.needed_n() == math.ceil(300 * (Z80 * c.se / abs(c.estimate)) ** 2)
    z90 = sps.norm.ppf(0.975) + sps.norm.ppf(0.9)
    assert c.needed_n(power=0.9) == math.ceil(300 * (z90 * c.se / abs(c.estimate)) ** 2)


def test_detectable_and_needed_n_closed_forms_t():
    c = compare_seeds([120.0, 130.0, 125.0], [118.0, 131.0, 120.0])  # differences 2, -1, 5
    se = np.std([2.0, -1.0, 5.0], ddof=1) / math.sqrt(3)
    assert c.detectable == pytest.approx((sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) * se)
    m = 2  # brute force: the first seed count whose detectable difference reaches the observed 2.0
    while (sps.t.ppf(0.975, m - 1) + sps.t.ppf(0.8, m - 1)) * se * math.sqrt(3 / m) > 2.0:
        m += 1
    assert c.needed_n() == m
    assert f"about {m} seeds would resolve a difference of this size" in describe(c)
    assert detectable_difference(1.0) == pytest.approx(Z80)
    assert math.isinf(detectable_difference(math.inf))


def test_describe_detectable_against_a_target_size():
    c = compare_seeds([120.0, 130.0, 125.0], [118.0, 131.0, 120.0], metric="SumR")  # detectable 9.29
    assert c.detects(9.7) and not c.detects(5.0)
    text = describe_detectable(c, 9.7, "the paper's gain", digits=1)
    assert text == ("With 3 seeds this design detects a true difference of 9.3 on SumR (80% power, 5% two-sided); "
                    "the paper's gain (9.7) is within its reach.")
    small = describe_detectable(c, 5.0, "a gain of 5", digits=1)
    assert f"is not within its reach: about {c.needed_n(size=5.0)} seeds would detect it" in small
    assert c.needed_n(size=5.0) > 3 and c.needed_n(size=-5.0) == c.needed_n(size=5.0)
    assert "cannot detect" in describe_detectable(compare_seeds([1.0], [2.0]), 9.7)


def test_detectable_difference_is_found_with_80_percent_power():
    """Paired t, 10 seeds, sd 1: a true difference equal to the rule's detectable size (true SE) is found
    with power 0.799 (noncentral t, exact). 4000 simulated designs: binomial sd 0.0063; tolerance 0.025 (4 sd)."""
    rng = np.random.default_rng(15)
    n = 10
    delta = (sps.t.ppf(0.975, n - 1) + sps.t.ppf(0.8, n - 1)) / math.sqrt(n)
    d = rng.normal(delta, 1.0, size=(4000, n))
    t_stat = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    found_closed = np.mean(np.abs(t_stat) > sps.t.ppf(0.975, n - 1))
    assert found_closed == pytest.approx(0.799, abs=0.025)
    found = np.mean([compare_seeds(row, np.zeros(n)).verdict == "better" for row in d[:400]])
    assert found == pytest.approx(0.8, abs=0.08)  # 400 designs through compare_seeds: sd 0.02, 4 sd


# ----------------------------------------------------------------------------- coverage


def test_paired_bootstrap_covers_the_truth_about_95_percent():
    """200 paired normal data sets (n = 40, true difference 0.5): percentile bootstrap intervals under-cover
    slightly at n = 40 (about 93-94%); binomial sd at 200 repetitions is 0.015. Accepted: 0.89 to 0.99."""
    rng = np.random.default_rng(16)
    covered = 0
    for rep in range(200):
        x = rng.normal(size=40)
        y = x - 0.5 + rng.normal(size=40)
        c = paired_bootstrap(x, y, n_boot=500, seed=rep)
        covered += c.low <= 0.5 <= c.high
    assert 0.89 <= covered / 200 <= 0.99


def test_seed_t_interval_covers_the_truth_95_percent():
    """t intervals are exact for normal seed noise: 2000 designs of 3 seeds, binomial sd 0.0049; +-0.02."""
    rng = np.random.default_rng(17)
    hits = []
    for _ in range(2000):
        c = compare_seeds(rng.normal(1.0, 2.0, 3), rng.normal(0.0, 2.0, 3))
        hits.append(c.low <= 1.0 <= c.high)
    assert np.mean(hits) == pytest.approx(0.95, abs=0.02)


# ----------------------------------------------------------------------------- single quantities


def test_single_mean_and_bootstrap_mean():
    v = np.array([3.0, 5.0, 4.0, 6.0])
    e = single_mean(v, name="RAL", metric="SumR")
    half = sps.t.ppf(0.975, 3) * v.std(ddof=1) / 2.0
    assert (e.low, e.high) == pytest.approx((4.5 - half, 4.5 + half))
    assert describe_estimate(e, digits=2) == (f"SumR of RAL is 4.50 (95% CI {4.5 - half:.2f} to {4.5 + half:.2f}, "
                                              f"t over 4 seeds, 3 degrees of freedom).")
    one = single_mean([2.0])
    assert math.isinf(one.high) and "no interval" in describe_estimate(one)
    x = np.random.default_rng(18).normal(10.0, 1.0, 400)
    b = bootstrap_mean(x)
    assert b.low < x.mean() < b.high and b.se == pytest.approx(1.0 / 20.0, rel=0.15)


def test_describe_vs_chance():
    assert describe_vs_chance(0.62, (0.55, 0.69), chance=0.5, what="sigma's AUC").startswith(
        "sigma's AUC is above chance")
    assert "below chance" in describe_vs_chance(0.4, (0.35, 0.45), chance=0.5)
    assert "cannot be told from chance" in describe_vs_chance(0.52, (0.45, 0.59), chance=0.5)
    assert "above chance" in describe_vs_chance(single_mean([5.0, 6.0, 5.5, 6.2]), chance=1.0)
    with pytest.raises(ConfigError):
        describe_vs_chance(0.5, chance=0.5)


# ----------------------------------------------------------------------------- JSON and errors


def test_to_dict_is_strict_json_and_round_trips():
    for c in (compare_seeds([1.0, 2.0, 4.0], [0.5, 1.0, 1.5]), compare_seeds([1.0], [0.0])):
        data = c.to_dict()
        json.dumps(data, allow_nan=False)
        assert data["verdict"] == c.verdict and data["needed_n"] == c.needed_n()
        assert Comparison.from_dict(json.loads(json.dumps(data))) == c
    assert isinstance(json.dumps(single_mean([1.0]).to_dict(), allow_nan=False), str)
    assert isinstance(Estimate("x", "", "seeds", 1, 1.0, 0.0, 2.0, 0.95, "m", 0.5), Estimate)


def test_bad_inputs_raise_named_errors():
    with pytest.raises(DataError, match="got 3 and 2"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(DataError, match="non-finite"):
        paired_bootstrap([1, np.nan], [1, 2])
    with pytest.raises(ConfigError, match="level"):
        paired_bootstrap([1, 2], [1, 2], level=95)
    with pytest.raises(ConfigError, match="n_boot"):
        paired_bootstrap([1, 2], [1, 2], n_boot=1)
    with pytest.raises(ConfigError, match="metric"):
        compare_rankings([1, 2], [1, 2], "R@3")
    with pytest.raises(DataError, match="1-based"):
        compare_rankings([0, 2], [1, 2], "R@1")
