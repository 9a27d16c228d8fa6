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


# ----------------------------------------------------------------------------- values checked when set

from ralbook.config import LossConfig, ModelConfig, TrainConfig
from ralbook.errors import ConfigError, RalbookError


@pytest.mark.parametrize("word,value", [(w, True) for w in ("true", "TRUE", "1", "yes", "On", "YES")]
                         + [(w, False) for w in ("false", "False", "0", "no", "OFF", "nO")])
def test_booleans_accept_the_usual_words_in_any_case(word, value):
    cfg = preset("demo").override(f"model.csa={word}")
    assert cfg.model.csa is value


@pytest.mark.parametrize("assignment,named,allowed", [
    ("model.msra=maybe", "model.msra='maybe'", "true/1/yes/on/false/0/no/off"),
    ("model.msra=ture", "model.msra='ture'", "true/1/yes/on/false/0/no/off"),
    ("model.csa=2", "model.csa='2'", "true/1/yes/on"),
    ("train.lr=abc", "train.lr='abc'", "a number"),
    ("train.lr=nan", "train.lr=nan", "a finite number"),
    ("train.lr=0", "train.lr=0.0", "> 0"),
    ("train.batch_size=1.5", "train.batch_size='1.5'", "an integer"),
    ("train.batch_size=0", "train.batch_size=0", ">= 1"),
    ("train.amp=fp32", "train.amp='fp32'", "none, bf16, fp16"),
    ("model.drop=1.5", "model.drop=1.5", "in [0.0, 1.0)"),
    ("loss.loss_factor=[1,2]", "loss.loss_factor=[1, 2]", "a list of 4 finite numbers"),
    ("loss.loss_factor=oops", "loss.loss_factor='oops'", "a JSON list"),
])
def test_a_bad_value_is_one_error_naming_key_value_and_what_is_allowed(assignment, named, allowed):
    with pytest.raises(ConfigError) as info:
        preset("demo").override(assignment)
    message = str(info.value)
    assert named in message and allowed in message and "\n" not in message


def test_sizes_must_fit_the_model():
    with pytest.raises(ConfigError, match="model.hidden_size=65 must be divisible by model.n_heads=4"):
        preset("demo").override("model.hidden_size=65")
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(hidden_size=64, n_heads=3)
    assert preset("demo").override("model.n_heads=8").model.n_heads == 8


def test_synced_keys_point_to_the_data_section():
    with pytest.raises(ConfigError, match="model.visual_dim follows data.visual_dim.*set data.visual_dim instead"):
        preset("tvr").override("model.visual_dim=1024")
    cfg = preset("tvr").override("data.visual_dim=1024")
    assert cfg.model.visual_dim == 1024


def test_invalid_configs_are_rejected_wherever_they_come_from():
    good = preset("demo").to_dict()
    for section, key, value in [("train", "lr", "0.001"), ("model", "csa", 0), ("train", "batch_size", 1.5),
                                ("loss", "neg_factor", {"a": 1}), ("train", "amp", None)]:
        bad = json.loads(json.dumps(good))
        bad[section][key] = value
        with pytest.raises(ConfigError, match=f"{section}.{key}="):
            Config.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown key"):
        Config.from_dict({**good, "train": {**good["train"], "lrr": 1}})
    with pytest.raises(ConfigError, match="must be a dict"):
        Config.from_dict({**good, "model": [1, 2]})
    with pytest.raises(ConfigError, match="must be a dict of sections"):
        Config.from_dict([good])
    with pytest.raises(ConfigError, match="train.patience=-1"):
        TrainConfig(patience=-1)
    with pytest.raises(ConfigError, match="loss.margin"):
        LossConfig(margin=-0.5)
    # an int where a float belongs is a float
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


def test_cli_rejects_a_bad_setting_before_anything_runs(tmp_path, capsys):
    from ralbook.cli import main

    out = tmp_path / "run"
    code = main(["train", "--data-root", str(tmp_path), "--out", str(out), "--set", "train.batch_size=1.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.batch_size='1.5': expected an integer" in err
    assert not out.exists()  # no run directory left behind
    assert issubclass(ConfigError, RalbookError)


def test_config_differences_names_each_change_but_the_resumable_ones():
    from ralbook.training.rundir import RESUMABLE_CHANGES, config_differences

    saved = preset("demo").to_dict()
    assert config_differences(saved, preset("demo").to_dict()) == []
    assert ("train", "device") in RESUMABLE_CHANGES
    now = preset("demo", train={"lr": 0.5, "device": "cuda"}, data={"data_root": "/elsewhere"}).to_dict()
    assert config_differences(saved, now) == [f"train.lr: run has {saved['train']['lr']!r}, now 0.5"]
