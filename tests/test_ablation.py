"""The ablation sweep (notebook 06): variants per seed, paired comparisons and their wording, and the sweep
runner's two rules (a stored run with other settings is refused; one configuration is trained once)."""
from __future__ import annotations

import json

import pytest
from scipy import stats as sps

from ralbook.errors import RalbookError
from ralbook.studies.ablation import (PAPER_GAIN, backbone_findings, backbone_table, backbone_variants,
                                      seed_only, seed_variants, switch_comparisons, switch_findings)
from ralbook.workbook import sweep


def test_variants_cover_each_backbone_alone_and_with_ral_per_seed():
    v = backbone_variants(["ms_sl", "gmmformer"], [1, 2])
    assert len(v) == 8
    assert v["ms_sl@2"] == {"model.backbone": "ms_sl", "model.csa": False, "model.word_confidence": False,
                            "model.msra": False, "train.seed": 2}
    assert all(v["gmmformer+RAL@1"][k] for k in ("model.csa", "model.word_confidence", "model.msra"))
    s = seed_variants({"full": {}, "no_msra": {"model.msra": False}}, [9527, 1])
    assert s == {"full@9527": {"train.seed": 9527}, "full@1": {"train.seed": 1},
                 "no_msra@9527": {"model.msra": False, "train.seed": 9527},
                 "no_msra@1": {"model.msra": False, "train.seed": 1}}


def _backbone_metrics(alone, with_ral, backbone="gmmformer_v2"):
    seeds = list(range(1, len(alone) + 1))
    m = {f"{backbone}@{s}": {"SumR": x} for s, x in zip(seeds, alone)}
    m.update({f"{backbone}+RAL@{s}": {"SumR": x} for s, x in zip(seeds, with_ral)})
    return m, backbone_variants([backbone], seeds)


def test_backbone_table_pairs_seeds_with_the_t_interval_by_hand():
    """Per-seed gains 30, 16, 20: mean 22, t(2) interval and detectable size computed here."""
    m, v = _backbone_metrics([100.0, 110.0, 105.0], [130.0, 126.0, 125.0])
    (row,) = backbone_table(m, v)
    d = [30.0, 16.0, 20.0]
    se = sps.tstd(d) / 3 ** 0.5
    assert row["SumR alone"] == 105.0 and row["SumR +RAL"] == pytest.approx(127.0) and row["difference"] == 22.0
    assert row["95% CI"] == [round(22 - sps.t.ppf(0.975, 2) * se, 1), round(22 + sps.t.ppf(0.975, 2) * se, 1)]
    assert row["detectable"] == round((sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) * se, 1)
    assert row["verdict"] == "better"
    text = backbone_findings([row])
    assert "gmmformer_v2 + RAL is better than gmmformer_v2 alone on test SumR by 22" in text
    assert "the paper's headline gain of RAL over GMMFormer v2 on TVR, in SumR (9.7) is not within its reach" in text
    steady, _ = _backbone_metrics([100.0, 110.0, 105.0], [130.0, 139.0, 136.0])  # gains 30, 29, 31
    assert "(9.7) is within its reach" in backbone_findings(backbone_table(steady, v))


def test_two_seeds_are_undecided_even_when_the_gap_exceeds_the_spread():
    """Gap 23 with seed range 10 and 4: the old rule called it a hint; t with 1 degree of freedom does not."""
    m, v = _backbone_metrics([100.0, 110.0], [130.0, 126.0], backbone="ms_sl")
    (row,) = backbone_table(m, v)
    text = backbone_findings([row])
    assert row["verdict"] == "undecided" and "cannot be told apart" in text and "better" not in text
    assert "this design detects a true difference of" in text and "With 2 seeds a gap larger than" in text


def test_swapping_swaps_and_a_tiny_gap_is_never_better():
    up, v = _backbone_metrics([100.0, 110.0, 105.0], [130.0, 126.0, 125.0])
    down, _ = _backbone_metrics([130.0, 126.0, 125.0], [100.0, 110.0, 105.0])
    assert "is worse than gmmformer_v2 alone on test SumR by 22" in backbone_findings(backbone_table(down, v))
    tiny, _ = _backbone_metrics([100.0, 110.0, 105.0], [103.01, 108.01, 104.01])  # gains 3.01, -1.99, -0.99
    text = backbone_findings(backbone_table(tiny, v))
    assert "better" not in text and "worse" not in text and "cannot be told apart" in text


def test_headline_gain_out_of_reach_says_how_many_seeds():
    m, v = _backbone_metrics([100.0, 110.0, 105.0], [120.0, 100.0, 110.0])  # gains 20, -10, 5
    (row,) = backbone_table(m, v)
    assert row["detectable"] > PAPER_GAIN
    assert "is not within its reach: about" in backbone_findings([row])


def test_switches_against_full_beside_the_seed_only_difference():
    metrics = {"full@9527": {"SumR": 200.0}, "full@1": {"SumR": 194.0}, "full@2": {"SumR": 203.0},
               "no_csa@9527": {"SumR": 150.0}, "no_csa@1": {"SumR": 146.0}, "no_csa@2": {"SumR": 155.0}}
    comps = switch_comparisons(metrics, ["full", "no_csa"], [9527, 1, 2])
    (entry,) = comps
    assert entry["comparison"].estimate == pytest.approx(-48.666666, abs=1e-4) and entry["seeds"] == [1, 2, 9527]
    noise = seed_only(metrics, [9527, 1, 2])
    assert noise["differences"] == {1: -6.0, 2: 3.0} and noise["sd"] == pytest.approx(sps.tstd([200, 194, 203]))
    text = switch_findings(comps, noise)
    assert "`full` moves by -6.0 (seed 1), +3.0 (seed 2) against seed 9527" in text
    assert "`no_csa` is worse than `full` on fused SumR by 48.7" in text
    assert "no measure of what seeds alone do" in switch_findings(comps, seed_only(
        {"full@9527": {"SumR": 1.0}}, [9527]))


# ----------------------------------------------------------------------------- the sweep runner


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """run_notebook replaced by writing the configuration 02 would train plus a best.pt; counts trainings."""
    from ralbook.workbook import pipeline

    trained = []

    def fake(notebook, out_path, parameters, **kwargs):
        run = __import__("pathlib").Path(parameters["run_dir"])
        run.mkdir(parents=True)
        cfg = sweep.variant_config(parameters, parameters["overrides"])
        (run / "config.json").write_text(json.dumps(cfg.to_dict()))
        (run / "best.pt").write_bytes(b"fake")
        trained.append(run.name)

    monkeypatch.setattr(pipeline, "run_notebook", fake)
    return trained


def test_one_configuration_is_trained_once(fake_training, tmp_path):
    """`full@9527` and `gmmformer_v2+RAL@9527` are the same run: two rows, one training."""
    common = {"preset": "demo", "epochs": 1, "hidden_size": 16, "device": "cpu"}
    switches = sweep.train_variants("02.ipynb", tmp_path / "s", seed_variants({"full": {}}, [9527, 1]), **common)
    backbones = sweep.train_variants("02.ipynb", tmp_path / "s" / "backbones",
                                     backbone_variants(["gmmformer_v2"], [9527, 1]),
                                     reuse=switches.runs.values(), **common)
    assert fake_training == ["full@9527", "full@1", "gmmformer_v2@9527", "gmmformer_v2@1"]
    assert backbones.runs["gmmformer_v2+RAL@9527"] == switches.runs["full@9527"]
    assert set(backbones.reused) == {"gmmformer_v2+RAL@9527", "gmmformer_v2+RAL@1"}
    # a second call trains nothing and maps the same rows to the same runs
    again = sweep.train_variants("02.ipynb", tmp_path / "s" / "backbones", backbone_variants(["gmmformer_v2"], [9527, 1]),
                                 reuse=switches.runs.values(), **common)
    assert len(fake_training) == 4 and again.runs == backbones.runs and again.trained == []


def test_a_stored_run_with_other_settings_is_refused(fake_training, tmp_path):
    common = {"preset": "demo", "epochs": 1, "hidden_size": 16, "device": "cpu"}
    sweep.train_variants("02.ipynb", tmp_path / "s", {"full@1": {"train.seed": 1}}, **common)
    with pytest.raises(RalbookError) as err:
        sweep.train_variants("02.ipynb", tmp_path / "s", {"full@1": {"train.seed": 1}}, **dict(common, epochs=3))
    message = str(err.value)
    assert "'full@1'" in message and "train.n_epoch: run has 1, now 3" in message and "Delete" in message
    assert fake_training == ["full@1"]
    # the same settings again: reused, not trained
    assert sweep.train_variants("02.ipynb", tmp_path / "s", {"full@1": {"train.seed": 1}}, **common).trained == []
