"""The robustness study: plan, cache keys, a second call that trains nothing, summaries and generated findings."""
from __future__ import annotations

import dataclasses
import json

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
    key = robustness.run_key(params, base, plan)
    # paths and the device do not change the key; anything that changes the run does
    moved = robustness.run_config(plan, RunSpec("grid", 0.5, "low", "ral", 0), tmp_path / "elsewhere", "cuda")
    assert robustness.run_key(params, moved, plan) == key
    assert robustness.run_key(params, swept, plan) != key
    assert robustness.run_key(robustness.demo_params(plan, 0.5, "high"), base, plan) != key
    assert robustness.run_key(params, base, dataclasses.replace(plan, n_boot=10)) != key


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


def fake_rows():
    rows = []
    for model, base in (("ral", 200.0), ("gmmformer_v2", 150.0)):
        for seed, wiggle in ((0, -2.0), (1, 2.0)):
            auc = 0.6 + 0.02 * seed if model == "ral" else None
            rows.append({"group": "grid", "ambiguity": 0.5, "noise": "low", "model": model, "seed": seed, "term": "",
                         "scale": 1.0, "sumr": base + wiggle,
                         "caption": {"auc": auc, "baselines": {"length": 0.3, "entropy": 0.55}},
                         "support_set": None})
    return rows


def test_summary_and_findings_are_computed_from_the_rows():
    summary = robustness.summarise(fake_rows())
    ral = next(s for s in summary if s["model"] == "ral")
    assert ral["sumr_mean"] == pytest.approx(200.0) and ral["sumr_std"] == pytest.approx(np.std([198, 202], ddof=1))
    assert ral["caption_auc_mean"] == pytest.approx(0.61) and ral["caption_length_auc_mean"] == pytest.approx(0.3)
    assert ral["support_set_auc_mean"] is None and ral["seeds"] == [0, 1]
    text = " ".join(robustness.findings(summary))
    assert "RAL leads with SumR 200.0 ± 2.8" in text and "gap of 50.0 is larger than" in text
    assert "In 1 of 1 settings the leading model's gap exceeds the seed spread." in text
    close = [dict(r, sumr=r["sumr"] - 49.0 if r["model"] == "ral" else r["sumr"]) for r in fake_rows()]
    assert "In 0 of 1 settings" in " ".join(robustness.findings(robustness.summarise(close)))
    # length (0.3) is further from 0.5 than sigma (0.61): sigma does not beat it
    # sigma 0.61 (std 0.014) is 0.09 short of length's distance from 0.5 (0.2)
    assert ("strongest baseline (length) 0.300 (read the other way round: 0.700): sigma does not beat that baseline "
            "(short by 0.090), more than the seed spread of sigma's AUC (0.014)" in text)
    assert "random ranking" not in text   # rows without a chance level: no chance sentence


def test_findings_compare_with_a_random_ranking():
    rows = [dict(r, chance_sumr=130.0) for r in fake_rows()]
    rows += [dict(r, ambiguity=0.0, sumr=r["sumr"] - 40, chance_sumr=110.0) for r in fake_rows()]
    summary = robustness.summarise(rows)
    assert {s["chance_sumr"] for s in summary} == {110.0, 130.0}
    text = " ".join(robustness.findings(summary))
    assert "ambiguity 0.5 (a random ranking: 130.0)" in text
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
    assert set(saved) == {"plan", "rows", "summary", "findings"} and len(saved["rows"]) == 4
    # the sweep's x1 run is the grid's RAL run: its time counts once (rows as read now: an earlier test retrains one)
    rows = saved["rows"]
    distinct = {r["key"]: r["seconds"] for r in rows}
    assert len(distinct) == 3 and robustness.run_minutes(rows) == pytest.approx(sum(distinct.values()) / 60)
    assert f"took {robustness.run_minutes(rows):.1f} minutes" in printed
    chance = f"{first.rows[0]['chance_sumr']:.1f}"
    assert any(line.startswith("amb 0.5 noise low") and chance in line for line in printed.splitlines())
    assert cli.main(["robustness", "--models", "nosuch", "--cache-dir", str(tmp_path / "x")]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
