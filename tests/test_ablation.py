"""The backbone dimension of the ablation notebook: variants, table and the generated statement."""
from __future__ import annotations

import pytest

from ralbook.studies.ablation import backbone_findings, backbone_table, backbone_variants, switch_findings


def test_variants_cover_each_backbone_alone_and_with_ral_per_seed():
    v = backbone_variants(["ms_sl", "gmmformer"], [1, 2])
    assert len(v) == 8
    assert v["ms_sl@2"] == {"model.backbone": "ms_sl", "model.csa": False, "model.word_confidence": False,
                            "model.msra": False, "train.seed": 2}
    assert all(v["gmmformer+RAL@1"][k] for k in ("model.csa", "model.word_confidence", "model.msra"))


def test_table_means_differences_and_seed_range_by_hand():
    v = backbone_variants(["ms_sl"], [1, 2])
    sumr = {"ms_sl@1": 100.0, "ms_sl@2": 110.0, "ms_sl+RAL@1": 130.0, "ms_sl+RAL@2": 126.0}
    (row,) = backbone_table({k: {"SumR": x} for k, x in sumr.items()}, v)
    assert row == {"backbone": "ms_sl", "seeds": 2, "SumR alone": 105.0, "SumR +RAL": 128.0, "difference": 23.0,
                   "seed range": 10.0}
    assert "larger than the seed range (10.0)" in backbone_findings([row])
    within = dict(row, difference=-4.0)
    assert "within seed noise" in backbone_findings([within])
    one_seed = backbone_table({k: {"SumR": x} for k, x in sumr.items() if k.endswith("@1")},
                              backbone_variants(["ms_sl"], [1]))
    assert one_seed[0]["seed range"] is None and "no estimate of the noise" in backbone_findings(one_seed)
    assert backbone_table({"ms_sl@1": {"SumR": 1.0}}, v) == []  # RAL side missing: no row


@pytest.mark.parametrize("metrics,expected", [
    ({"full": {"SumR": 150.0}, "no_csa": {"SumR": 140.5}}, "`no_csa`: SumR 140.5 (-9.5 against `full`)"),
    ({"no_csa": {"SumR": 1.0}}, "No `full` variant"),
])
def test_switch_findings(metrics, expected):
    assert expected in switch_findings(metrics)
