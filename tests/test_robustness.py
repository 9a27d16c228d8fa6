"""The robustness study: plan, cache keys, a second call that trains nothing, summaries and generated findings."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from ralbook import cli
from ralbook.studies import robustness
from ralbook.errors import RalbookError
from ralbook.studies.robustness import RunSpec, StudyPlan

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

TINY = StudyPlan(ambiguity=(0.5,), noise=("low",), models=("ral", "gmmformer_v2"), seeds=(0,), loss_scales=(1.0, 10.0),
                 sweep_terms=("pm",), n_train=12, n_val=4, n_test=10, epochs=1, hidden_size=16, batch_size=6,
                 n_boot=20)


def test_plan_lists_the_grid_then_the_sweep():
    plan = StudyPlan()
    runs = plan.runs()
    assert len(runs) == 3 * 2 * 3 * 3 + 2 * 3 * 3
    assert len(set(runs)) == len(runs)
    sweep = [r for r in runs if r.group == "sweep"]
    assert {(r.term, r.scale) for r in sweep} == {(t, s) for t in ("pm", "da") for s in (1.0, 10.0, 100.0)}
    assert all(r.model == "ral" and r.ambiguity == 0.5 and r.noise == "low" for r in sweep)


@pytest.mark.parametrize("change, fragment", [
    ({"models": ("ral", "clip4clip")}, "unknown model 'clip4clip'"),
    ({"noise": ("loud",)}, "unknown noise level 'loud'"),
    ({"ambiguity": (1.5,)}, "ambiguity 1.5 outside"),
    ({"loss_scales": (0.0,)}, "loss scale 0.0"),
    ({"seeds": ()}, "at least one seed"),
    ({"threads": -1}, "threads must be a whole number"),
])
def test_bad_plans_are_rejected(change, fragment):
    with pytest.raises(RalbookError, match=fragment):
        dataclasses.replace(StudyPlan(), **change).validate()


def test_configs_and_cache_keys(tmp_path):
    plan = StudyPlan()
    params = robustness.demo_params(plan, 0.25, "high")
    assert params.ambiguous_fraction == 0.25
    assert params.frame_noise == pytest.approx(2 * 0.95) and params.drift == pytest.approx(2 * 0.6)
    gmm = robustness.run_config(plan, RunSpec("grid", 0.25, "high", "gmmformer_v2", 1), tmp_path / "a")
    assert (gmm.model.csa, gmm.model.word_confidence, gmm.model.msra, gmm.train.seed) == (False, False, False, 1)
    swept = robustness.run_config(plan, RunSpec("sweep", 0.5, "low", "ral", 0, "da", 100.0), tmp_path / "a")
    base = robustness.run_config(plan, RunSpec("grid", 0.5, "low", "ral", 0), tmp_path / "a")
    assert swept.loss.da_weight == pytest.approx(100 * base.loss.da_weight)
    assert swept.loss.pm_weight == base.loss.pm_weight
    key = robustness.run_key(params, base, plan, 1)
    # paths and the device do not change the key; anything that changes the run does, threads too
    moved = robustness.run_config(plan, RunSpec("grid", 0.5, "low", "ral", 0), tmp_path / "elsewhere", "cuda")
    assert robustness.run_key(params, moved, plan, 1) == key
    assert robustness.run_key(params, swept, plan, 1) != key
    assert robustness.run_key(robustness.demo_params(plan, 0.5, "high"), base, plan, 1) != key
    assert robustness.run_key(params, base, dataclasses.replace(plan, n_boot=10), 1) != key
    assert robustness.run_key(params, base, plan, 2) != key


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    cache = tmp_path_factory.mktemp("study")
    return cache, robustness.run_study(TINY, cache, progress=False)


def test_first_call_trains_each_distinct_run_once(tiny_study):
    cache, result = tiny_study
    # grid: RAL + GMMFormer v2; sweep: PM x1 (= the grid's RAL run, served by the cache) and PM x10
    assert len(result.rows) == 4 and result.trained == 3 and result.cached == 1
    assert len(list((cache / "runs").iterdir())) == 3 and len(list((cache / "data").iterdir())) == 1
    ral = next(r for r in result.rows if r["group"] == "grid" and r["model"] == "ral")
    again = next(r for r in result.rows if r["group"] == "sweep" and r["scale"] == 1.0)
    assert ral["key"] == again["key"] and ral["sumr"] == again["sumr"]
    gmm = next(r for r in result.rows if r["model"] == "gmmformer_v2")
    assert gmm["caption"]["auc"] is None and set(gmm["caption"]["baselines"]) == {"length", "neg_margin", "entropy"}
    assert 0.0 <= ral["caption"]["auc"] <= 1.0 and 0 <= ral["sumr"] <= 400


def test_second_call_trains_nothing(tiny_study, monkeypatch):
    cache, first = tiny_study

    def refuse(*args, **kwargs):
        raise AssertionError("the second call must not train")

    monkeypatch.setattr("ralbook.studies.robustness.train", refuse)
    second = robustness.run_study(TINY, cache, progress=False)
    assert second.trained == 0 and second.cached == 4
    assert [r["sumr"] for r in second.rows] == [r["sumr"] for r in first.rows]
    # a plan that adds one seed trains exactly the new runs (here: refused, so it must try)
    with pytest.raises(AssertionError, match="must not train"):
        robustness.run_study(dataclasses.replace(TINY, seeds=(0, 1)), cache, progress=False)


def test_an_interrupted_run_is_trained_again(tiny_study, tmp_path):
    cache, first = tiny_study
    key = first.rows[1]["key"]
    (cache / "runs" / key / "result.json").unlink()
    again = robustness.run_study(TINY, cache, progress=False)
    assert again.trained == 1 and again.rows[1]["sumr"] == pytest.approx(first.rows[1]["sumr"], abs=1e-6)


def fake_rows(ral=(198.0, 202.0), gmm=(148.0, 152.0), chance=None, amb=0.5, noise="low"):
    """Grid rows of one setting, one SumR per seed (seeds 0, 1, ...)."""
    rows = []
    for model, values in (("ral", ral), ("gmmformer_v2", gmm)):
        for seed, sumr in enumerate(values):
            auc = 0.6 + 0.02 * seed if model == "ral" else None
            rows.append({"group": "grid", "ambiguity": amb, "noise": noise, "model": model, "seed": seed, "term": "",
                         "scale": 1.0, "sumr": sumr, "key": f"{amb}{noise}{model}{seed}", "seconds": 90.0,
                         "threads": 2, "chance_sumr": chance,
                         "caption": {"auc": auc, "baselines": {"length": 0.3, "entropy": 0.55}},
                         "support_set": None})
    return rows


def _text(rows):
    return " ".join(robustness.findings(rows))


def test_summary_keeps_each_seed():
    summary = robustness.summarise(fake_rows())
    ral = next(s for s in summary if s["model"] == "ral")
    assert ral["sumr_mean"] == pytest.approx(200.0) and ral["sumr_std"] == pytest.approx(np.std([198, 202], ddof=1))
    assert ral["sumr_by_seed"] == {0: 198.0, 1: 202.0} and ral["seeds"] == [0, 1]
    assert ral["caption_auc_mean"] == pytest.approx(0.61) and ral["caption_length_auc_mean"] == pytest.approx(0.3)
    assert ral["support_set_auc_mean"] is None


def test_pairs_are_paired_by_seed_with_the_t_interval_by_hand():
    """RAL - GMMFormer v2 per seed: 52, 49, 51 -> mean 50.67, SE sd/sqrt(3), t(2) interval and detectable."""
    from scipy import stats as sps

    rows = fake_rows(ral=(200.0, 199.0, 203.0), gmm=(148.0, 150.0, 152.0))
    (pair,) = robustness.pair_comparisons(rows)
    c = pair["comparison"]
    d = np.array([52.0, 49.0, 51.0])
    se = d.std(ddof=1) / np.sqrt(3)
    assert c.estimate == pytest.approx(d.mean()) and c.n == 3 and pair["seeds"] == [0, 1, 2]
    assert c.low == pytest.approx(d.mean() - sps.t.ppf(0.975, 2) * se)
    assert c.detectable == pytest.approx((sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) * se)
    text = _text(rows)
    assert "RAL against its backbone at noise low, ambiguity 0.5: RAL is better than GMMFormer v2 on test SumR" in text
    assert "leads" not in text and "runner-up" not in text


def test_swapping_the_models_swaps_the_words():
    rows = fake_rows(ral=(148.0, 150.0, 152.0), gmm=(200.0, 199.0, 203.0))
    assert "RAL is worse than GMMFormer v2 on test SumR by 50.7" in _text(rows)


def test_a_tiny_gap_is_never_better():
    """A gap of 0.01 SumR under seed noise (per-seed differences 3.01, -1.99, -0.99)."""
    rows = fake_rows(ral=(203.01, 188.01, 209.01), gmm=(200.0, 190.0, 210.0))
    (line,) = [x for x in robustness.findings(rows) if x.startswith("RAL against its backbone")]
    assert "better" not in line and "worse" not in line
    assert "RAL and GMMFormer v2 cannot be told apart on test SumR" in line and "+0.0," in line


def test_two_seeds_are_undecided_and_say_what_they_could_detect():
    """Gap 50 +- 0.5 over 2 seeds is larger than any spread, yet t with 1 degree of freedom leaves room."""
    rows = fake_rows(ral=(200.0, 205.0), gmm=(150.0, 145.0))
    text = _text(rows)
    assert "cannot be told apart" in text and "better" not in text
    assert "With 2 seeds the t interval has one degree of freedom" in text
    assert "Smallest difference RAL vs GMMFormer v2 this study detects" in text


def test_near_chance_settings_name_no_winner():
    rows = fake_rows(ral=(104.0, 105.0, 106.0), gmm=(100.0, 101.0, 101.5), chance=100.5)
    text = _text(rows)
    assert "no comparison between them is meaningful here" in text and "better" not in text
    assert "Every model is only a few SumR points above a random ranking in every setting" in text
    far = fake_rows(ral=(204.0, 205.0, 206.0), gmm=(100.0, 101.0, 101.5), chance=100.5)
    assert "meaningful" not in _text(far)


def test_trend_is_the_paired_difference_of_differences():
    """Gap RAL - GMMFormer v2 per seed: 10, 12, 11 at ambiguity 0; 30, 31, 35 at 0.5 -> +20, +19, +24."""
    rows = fake_rows(ral=(110.0, 112.0, 111.0), gmm=(100.0, 100.0, 100.0), amb=0.0, chance=50.0)
    rows += fake_rows(ral=(130.0, 131.0, 135.0), gmm=(100.0, 100.0, 100.0), amb=0.5, chance=60.0)
    (trend,) = robustness.trend_comparisons(rows)
    assert trend["axis"] == "ambiguity" and trend["comparison"].estimate == pytest.approx(21.0)
    assert trend["comparison"].n == 3
    text = _text(rows)
    assert "The SumR gap RAL - GMMFormer v2 is larger at ambiguity 0.5 than at ambiguity 0 (noise low" in text
    flat = fake_rows(ral=(110.0, 112.0, 111.0), gmm=(100.0, 100.0, 100.0), amb=0.0, chance=50.0)
    flat += fake_rows(ral=(115.0, 107.0, 111.0), gmm=(100.0, 100.0, 100.0), amb=0.5, chance=60.0)
    assert "at ambiguity 0.5 cannot be told from the gap at ambiguity 0" in _text(flat)


def test_headline_gain_reach_and_the_plan_that_would_detect_it():
    """Per-seed differences 20, 0, 10 (SE 5.77, detectable 31.0 with 3 seeds): +9.7 is out of reach; the
    seeds needed come from Comparison.needed_n, the minutes from the recorded 90 s per run."""
    rows = fake_rows(ral=(120.0, 100.0, 110.0), gmm=(100.0, 100.0, 100.0), chance=20.0)
    (pair,) = robustness.pair_comparisons(rows)
    c = pair["comparison"]
    needed = c.needed_n(size=robustness.PAPER_GAIN)
    assert c.detectable == pytest.approx(31.0, abs=0.05) and needed > 3 and not c.detects(robustness.PAPER_GAIN)
    text = _text(rows)
    assert "is within reach in 0 of them" in text
    runs = 1 * 2 * (needed - 3)
    assert f"about {needed} seeds per setting" in text and f"{runs} more runs" in text
    assert f"about {runs * 1.5:.0f} minutes at the 1.5 minutes one run took" in text and "2 thread(s)" in text
    easy = fake_rows(ral=(150.0, 151.0, 152.0), gmm=(100.0, 100.5, 101.0), chance=20.0)
    assert "within reach in 1 of them" in _text(easy) and "seeds per setting" not in _text(easy)
    one = fake_rows(ral=(150.0,), gmm=(100.0,), chance=20.0)
    assert "at least 2 seeds per setting are needed" in _text(one)


def test_sigma_is_compared_with_the_baseline_in_its_informative_direction():
    rows = fake_rows(ral=(198.0, 202.0, 200.0), gmm=(148.0, 152.0, 150.0))
    (s,) = robustness.sigma_comparisons(rows)
    # length 0.3 reads as 0.7 (stronger than entropy 0.55): sigma 0.60, 0.62, 0.64 against 0.7
    assert s["baseline"] == "length" and s["flipped"] and s["comparison"].estimate == pytest.approx(-0.08)
    assert "sigma is worse than length (read as 1 - AUC) on caption AUC" in _text(rows)


def test_findings_compare_with_a_random_ranking():
    rows = fake_rows(chance=130.0) + [dict(r, ambiguity=0.0, sumr=r["sumr"] - 40, chance_sumr=110.0,
                                           key="a0" + r["key"]) for r in fake_rows()]
    summary = robustness.summarise(rows)
    assert {s["chance_sumr"] for s in summary} == {110.0, 130.0}
    text = _text(rows)
    # gains over chance: 200-130=70, 150-130=20, 160-110=50, 110-110=0
    assert "0.0 to 70.0 SumR points above a random ranking" in text
    assert "rises from 110.0 at ambiguity 0 to 130.0 at 0.5" in text
    fig = robustness.figure_sumr_vs_ambiguity(summary)
    assert "random ranking" in [line.get_label() for line in fig.axes[0].get_lines()]


def test_chance_sumr_of_a_generated_collection(tiny_study):
    """The row's chance level equals the formula applied to the collection's multi-ground truth by hand."""
    from math import comb

    cache, result = tiny_study
    root = next((cache / "data").iterdir())
    relevant = json.loads((root / "demo" / "GroundTruth" / "relevant_test.json").read_text())
    n = TINY.n_test
    expected = sum(100.0 * np.mean([1 - comb(n - len(set(v)), min(k, n)) / comb(n, min(k, n)) for v in relevant.values()])
                   for k in (1, 5, 10, 100))
    assert result.rows[0]["chance_sumr"] == pytest.approx(expected, rel=1e-9)
    assert result.rows[0]["sumr"] > 0 and 0 < expected <= 400


def test_figures_have_one_panel_per_noise_level():
    rows = fake_rows() + [dict(r, noise="high", sumr=r["sumr"] - 20) for r in fake_rows()]
    rows += [dict(r, group="sweep", term="pm", scale=s) for s in (1.0, 10.0) for r in fake_rows() if r["model"] == "ral"]
    summary = robustness.summarise(rows)
    fig = robustness.figure_sumr_vs_ambiguity(summary)
    assert [ax.get_title() for ax in fig.axes] == ["visual noise: low", "visual noise: high"]
    fig = robustness.figure_sigma_auc_vs_weight(summary)
    assert len(fig.axes) == 2


def test_cli_reads_back_the_cache(tiny_study, tmp_path, capsys):
    cache, first = tiny_study
    out = tmp_path / "study.json"
    args = ["robustness", "--cache-dir", str(cache), "--ambiguity", "0.5", "--noise", "low", "--models",
            "ral,gmmformer_v2", "--seeds", "0", "--loss-scales", "1,10", "--sweep-terms", "pm", "--epochs", "1",
            "--n-train", "12", "--n-val", "4", "--n-test", "10", "--hidden-size", "16", "--batch-size", "6",
            "--n-boot", "20", "--json", str(out), "--no-progress"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "0 trained, 4 read from the cache" in printed
    saved = json.loads(out.read_text())
    assert set(saved) == {"plan", "rows", "summary", "comparisons", "findings"} and len(saved["rows"]) == 4
    # 0 = chosen once: the suite's setting (conftest: RALBOOK_THREADS=1 unless the environment sets it)
    assert saved["plan"]["threads"] == 0 and {r["threads"] for r in saved["rows"]} == {int(os.environ["RALBOOK_THREADS"])}
    # the sweep's x1 run is the grid's RAL run: its time counts once (rows as read now: an earlier test retrains one)
    rows = saved["rows"]
    distinct = {r["key"]: r["seconds"] for r in rows}
    assert len(distinct) == 3 and robustness.run_minutes(rows) == pytest.approx(sum(distinct.values()) / 60)
    assert f"took {robustness.run_minutes(rows):.1f} minutes" in printed
    chance = f"{first.rows[0]['chance_sumr']:.1f}"
    assert any(line.startswith("amb 0.5 noise low") and chance in line for line in printed.splitlines())
    assert cli.main(["robustness", "--models", "nosuch", "--cache-dir", str(tmp_path / "x")]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
