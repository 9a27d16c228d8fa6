"""Configuration as data: one dataclass per concern, and presets per dataset.

Every constant of SPEC section 8 lives here, so a GPU user reproduces the paper by
naming a preset (``tvr``, ``act``, ``cha``) and a data root; ``demo`` is sized for
two CPU cores and the bundled demo collection.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    """Where the features are and what they look like."""

    data_root: str = "data"            # folder that holds COLLECTION/
    collection: str = "demo"           # sub-folder name, also the caption-file prefix
    feature: str = "synthetic"         # FeatureData/FEATURE
    visual_dim: int = 64               # Dv
    text_dim: int = 48                 # Dt
    text_feature_file: str = ""        # default: roberta_COLLECTION_query_feat.hdf5
    max_desc_len: int = 30             # query tokens kept
    max_frames: int = 128              # frame rows after binning
    n_clips: int = 32                  # clip rows
    val_split: str = "val"             # caption file used for model selection
    val_from_train: float = 0.0        # >0: carve this fraction of train videos out as val
    num_workers: int = 0


@dataclass
class ModelConfig:
    """GMMFormer v2 + RAL (SPEC sections 3-6); switches for the ablations."""

    visual_dim: int = 64
    text_dim: int = 48
    hidden_size: int = 384
    n_heads: int = 4
    max_desc_len: int = 30
    max_frames: int = 128
    n_clips: int = 32
    input_drop: float = 0.2
    drop: float = 0.2
    sft_factor: float = 0.09
    n_proxies: int = 6
    initializer_range: float = 0.02
    alpha: float = 0.5                 # weight of the clip score in the fused score
    csa: bool = True                   # RAL frame branch (off: GMMFormer v2 frame score)
    word_confidence: bool = True       # off: uniform weights over valid words
    msra: bool = True                  # off: no proxies, no L_PM / L_DA
    checkpoint_branches: bool = False  # recompute GMM branches in backward: half the memory, 15-20% more time
    backbone: str = "gmmformer_v2"     # gmmformer_v2 | gmmformer | ms_sl (see docs/backbones.md)
    gmm_windows: str = "per_video"     # gmmformer: per_video (padding-independent) | batch (as the public code)


@dataclass
class LossConfig:
    """Weights of the training objective (SPEC section 7)."""

    margin: float = 0.1
    loss_factor: list[float] = field(default_factory=lambda: [0.05, 0.04, 8e-5, 0.09])
    neg_factor: list[float] = field(default_factory=lambda: [0.15, 32.0, 1.0])
    pm_weight: float = 0.004           # L_PM
    da_weight: float = 0.00025         # L_DA
    hard_pool_size: int = 20


@dataclass
class TrainConfig:
    """Optimisation and run control (SPEC section 8)."""

    lr: float = 3e-4
    warmup: float = 0.01
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 128              # videos per batch (with all their captions)
    n_epoch: int = 150
    patience: int = 15
    hard_negative_start_epoch: int = 20
    seed: int = 9527
    device: str = "auto"               # auto: cuda, then mps, then cpu
    amp: str = "none"                  # none | bf16 | fp16
    compile: bool = False
    eval_query_chunk: int = 100        # queries scored at once (bounds evaluation memory)
    eval_video_chunk: int = 50         # videos scored at once


@dataclass
class Config:
    """A whole run: data, model, loss and training settings."""

    name: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in sections:
                raise KeyError(f"unknown config section {key!r}; expected one of {sorted(sections)}")
            if key == "name":
                kwargs[key] = value
                continue
            section_cls = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig}[key]
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = set(value) - known
            if unknown:
                raise KeyError(f"unknown key(s) {sorted(unknown)} in config section {key!r}")
            kwargs[key] = section_cls(**value)
        return cls(**kwargs)

    def override(self, assignment: str) -> "Config":
        """Return a copy with one ``section.key=value`` assignment applied (value parsed as JSON when it can be)."""
        if "=" not in assignment:
            raise ValueError(f"expected SECTION.KEY=VALUE, got {assignment!r}")
        path, raw = assignment.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2:
            raise ValueError(f"expected SECTION.KEY=VALUE (e.g. train.lr=1e-4), got {assignment!r}")
        section, key = parts
        new = copy.deepcopy(self)
        target = getattr(new, section, None)
        if target is None or not dataclasses.is_dataclass(target):
            raise KeyError(f"unknown config section {section!r} in {assignment!r}")
        if key not in {f.name for f in dataclasses.fields(target)}:
            raise KeyError(f"unknown key {key!r} in config section {section!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        old = getattr(target, key)
        if isinstance(old, bool) and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(old, float) and isinstance(value, int):
            value = float(value)
        setattr(target, key, value)
        if section == "model" and key == "backbone" and value != old:  # a new backbone brings its recipe
            new.apply_backbone_recipe()
        new.sync()
        return new

    def apply_backbone_recipe(self) -> None:
        """Set the training recipe of ``model.backbone`` for this preset (``name``), from the backbone's public code."""
        for section, values in backbone_recipe(self.model.backbone, self.name).items():
            for key, value in values.items():
                setattr(getattr(self, section), key, copy.deepcopy(value))

    def sync(self) -> None:
        """Copy the values the data dictates (feature sizes, lengths) into the model config."""
        for key in ("visual_dim", "text_dim", "max_desc_len", "max_frames", "n_clips"):
            setattr(self.model, key, getattr(self.data, key))


def _paper(collection: str, feature: str, visual_dim: int, text_dim: int, drop: float, sft: float,
           alpha: float, lr: float, margin: float, loss_factor: list[float], neg_factor: list[float],
           n_epoch: int, patience: int) -> dict[str, Any]:
    return {
        "data": {"collection": collection, "feature": feature, "visual_dim": visual_dim, "text_dim": text_dim,
                 "data_root": "", "val_split": "val", "num_workers": 4},
        "model": {"hidden_size": 384, "n_heads": 4, "input_drop": drop, "drop": drop, "sft_factor": sft,
                  "alpha": alpha},
        "loss": {"margin": margin, "loss_factor": loss_factor, "neg_factor": neg_factor, "hard_pool_size": 20},
        "train": {"lr": lr, "warmup": 0.01, "weight_decay": 0.01, "batch_size": 128, "n_epoch": n_epoch,
                  "patience": patience, "hard_negative_start_epoch": 20, "seed": 9527},
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tvr": _paper("tvr", "i3d_resnet", 3072, 768, 0.2, 0.09, 0.5, 3e-4, 0.1,
                  [0.05, 0.04, 8e-5, 0.09], [0.15, 32.0, 1.0], 150, 15),
    "act": _paper("activitynet", "i3d", 1024, 1024, 0.31, 0.6, 0.6, 2.5e-4, 0.2,
                  [0.02, 0.04, 0.003, 0.11], [0.2, 32.0, 1.0], 100, 10),
    "cha": _paper("charades", "i3d_rgb_lgi", 1024, 1024, 0.25, 0.6, 0.7, 2e-4, 0.2,
                  [0.02, 0.04, 0.003, 0.1], [0.2, 32.0, 1.0], 100, 10),
    # Sized for two CPU cores and the bundled demo collection (data/demo).
    "demo": {
        "data": {"collection": "demo", "feature": "synthetic", "visual_dim": 64, "text_dim": 48,
                 "data_root": "data", "val_split": "val", "num_workers": 0},
        "model": {"hidden_size": 64, "n_heads": 4, "input_drop": 0.1, "drop": 0.1, "sft_factor": 0.09,
                  "alpha": 0.5},
        "loss": {"margin": 0.1, "loss_factor": [0.05, 0.04, 8e-5, 0.09], "neg_factor": [0.15, 32.0, 1.0],
                 "hard_pool_size": 20},
        "train": {"lr": 3e-4, "warmup": 0.01, "weight_decay": 0.01, "batch_size": 32, "n_epoch": 10,
                  "patience": 5, "hard_negative_start_epoch": 5, "seed": 9527},
    },
}


def _recipe(alpha: float, drop: float, lr: float, margin: float, loss_factor: list[float],
            neg_factor: list[float], hard_negative_start_epoch: int, seed: int) -> dict[str, dict[str, Any]]:
    return {"model": {"alpha": alpha, "input_drop": drop, "drop": drop},
            "loss": {"margin": margin, "loss_factor": loss_factor, "neg_factor": neg_factor},
            "train": {"lr": lr, "hard_negative_start_epoch": hard_negative_start_epoch, "seed": seed}}


# Each backbone's recipe per dataset, from its public code (run scripts and configs): fusion weight
# alpha (clip_scale_w), dropout, learning rate, margin, loss factors [clip NCE, frame NCE, query
# diversity, OT], neg_factor [margin, scale, lambda] of the query diversity, start of hard negatives,
# seed. Both also use BertAdam, warmup 0.01, weight decay 0.01, batch 128, 100 epochs, patience 10.
# MS-SL has no query diversity and no OT; GMMFormer no OT (their factors are 0).
BACKBONE_RECIPES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "ms_sl": {
        "tvr": _recipe(0.7, 0.1, 2.5e-4, 0.1, [0.02, 0.04, 0.0, 0.0], [0.15, 32.0, 1.0], 20, 2018),
        "act": _recipe(0.7, 0.1, 2.5e-4, 0.2, [0.02, 0.04, 0.0, 0.0], [0.15, 32.0, 1.0], 20, 2018),
        "cha": _recipe(0.5, 0.1, 2.5e-4, 0.2, [0.02, 0.04, 0.0, 0.0], [0.15, 32.0, 1.0], 20, 2018),
    },
    "gmmformer": {
        "tvr": _recipe(0.7, 0.2, 3e-4, 0.1, [0.05, 0.04, 0.001, 0.0], [0.15, 32.0, 1.0], 30, 9527),
        "act": _recipe(0.7, 0.2, 2.5e-4, 0.2, [0.02, 0.04, 0.015, 0.0], [0.2, 32.0, 1.0], 20, 9527),
        "cha": _recipe(0.7, 0.15, 2.5e-4, 0.2, [0.02, 0.02, 0.005, 0.0], [0.15, 32.0, 1.0], 100, 9527),
    },
}
for _name in ("tvr", "act", "cha"):
    for _recipes in BACKBONE_RECIPES.values():
        _recipes[_name]["train"].update(n_epoch=100, patience=10)
BACKBONES = ("gmmformer_v2", "gmmformer", "ms_sl")


def backbone_recipe(backbone: str, preset_name: str) -> dict[str, dict[str, Any]]:
    """The section values that ``backbone`` sets on preset ``preset_name``.

    GMMFormer v2's recipe is the preset itself. On ``demo`` (and any other preset) the other
    backbones take the loss and fusion settings of their TVR recipe and keep the preset's run sizes.
    """
    if backbone not in BACKBONES:
        raise KeyError(f"unknown backbone {backbone!r}; choose one of {list(BACKBONES)}")
    base = PRESETS.get(preset_name, PRESETS["demo"])
    recipes = BACKBONE_RECIPES.get(backbone)
    if recipes is None:  # gmmformer_v2: the keys the other recipes set, as the preset has them
        keys = {s: set(v) for s, v in BACKBONE_RECIPES["gmmformer"]["tvr"].items()}
        return {s: {k: base[s][k] for k in sorted(keys[s]) if k in base.get(s, {})} for s in keys}
    if preset_name in recipes:
        return recipes[preset_name]
    tvr = recipes["tvr"]
    return {"model": {"alpha": tvr["model"]["alpha"]}, "loss": dict(tvr["loss"])}


def preset(name: str, **section_overrides: dict[str, Any]) -> Config:
    """Build the Config of a preset; ``section_overrides`` maps a section name to a dict of its keys.

    A ``model.backbone`` override brings that backbone's recipe (``backbone_recipe``); the other overrides win.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    d = copy.deepcopy(PRESETS[name])
    backbone = section_overrides.get("model", {}).get("backbone")
    if backbone:
        for section, values in backbone_recipe(backbone, name).items():
            d.setdefault(section, {}).update(copy.deepcopy(values))
    for section, values in section_overrides.items():
        d.setdefault(section, {}).update(values)
    cfg = Config.from_dict({"name": name, **d})
    cfg.sync()
    return cfg
