"""Presets carry docs/method.md#settings-per-dataset values; configs round-trip and reject typos."""
from __future__ import annotations

import json

import pytest

from ralbook.config import Config, preset

# docs/method.md#settings-per-dataset, one row per setting: (tvr, act, cha)
SPEC_TABLE = {
    ("data", "feature"): ("i3d_resnet", "i3d", "i3d_rgb_lgi"),
    ("data", "visual_dim"): (3072, 1024, 1024),
    ("data", "text_dim"): (768, 1024, 1024),
    ("model", "hidden_size"): (384, 384, 384),
    ("model", "n_heads"): (4, 4, 4),
    ("model", "input_drop"): (0.2, 0.31, 0.25),
    ("model", "drop"): (0.2, 0.31, 0.25),
    ("model", "sft_factor"): (0.09, 0.6, 0.6),
    ("model", "alpha"): (0.5, 0.6, 0.7),
    ("train", "lr"): (3e-4, 2.5e-4, 2e-4),
    ("train", "warmup"): (0.01, 0.01, 0.01),
    ("train", "weight_decay"): (0.01, 0.01, 0.01),
    ("loss", "margin"): (0.1, 0.2, 0.2),
    ("loss", "loss_factor"): ([0.05, 0.04, 8e-5, 0.09], [0.02, 0.04, 0.003, 0.11], [0.02, 0.04, 0.003, 0.1]),
    ("loss", "neg_factor"): ([0.15, 32, 1], [0.2, 32, 1], [0.2, 32, 1]),
    ("train", "batch_size"): (128, 128, 128),
    ("train", "n_epoch"): (150, 100, 100),
    ("train", "patience"): (15, 10, 10),
    ("train", "hard_negative_start_epoch"): (20, 20, 20),
    ("loss", "hard_pool_size"): (20, 20, 20),
    ("train", "seed"): (9527, 9527, 9527),
}


@pytest.mark.parametrize("column,name", list(enumerate(["tvr", "act", "cha"])))
def test_paper_presets_match_spec(column, name):
    cfg = preset(name)
    for (section, key), values in SPEC_TABLE.items():
        assert getattr(getattr(cfg, section), key) == values[column], (name, section, key)
    assert (cfg.model.visual_dim, cfg.model.text_dim) == (cfg.data.visual_dim, cfg.data.text_dim)
    assert (cfg.model.max_desc_len, cfg.model.max_frames, cfg.model.n_clips) == (30, 128, 32)
    assert (cfg.loss.pm_weight, cfg.loss.da_weight, cfg.model.n_proxies) == (0.004, 0.00025, 6)


def test_config_round_trips_through_json():
    cfg = preset("act").override("train.lr=1e-4").override("model.msra=false")
    back = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.train.lr == 1e-4 and back.model.msra is False


def test_override_syncs_data_dims_into_model():
    cfg = preset("demo").override("data.visual_dim=100")
    assert cfg.model.visual_dim == 100


@pytest.mark.parametrize("bad", ["train.lrr=1", "trian.lr=1", "lr=1", "train.lr"])
def test_override_rejects_typos(bad):
    with pytest.raises((KeyError, ValueError)):
        preset("demo").override(bad)


def test_unknown_preset_lists_choices():
    with pytest.raises(KeyError, match="demo"):
        preset("tvrr")
