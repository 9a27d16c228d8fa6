"""Configuration as data: one dataclass per concern, and presets per dataset.

Every constant of docs/method.md#settings-per-dataset lives here, so a GPU user reproduces the paper by
naming a preset (``tvr``, ``act``, ``cha``) and a data root; ``demo`` is sized for
two CPU cores and the bundled demo collection; ``clip`` trains on a collection written by
``ralbook extract`` (512-d CLIP features, the rest as ``tvr``).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from ralbook.errors import ConfigError, RalbookError, shorten
from ralbook.files import resolve_path


# ----------------------------------------------------------------------------- checking values

Limit = tuple[Callable[[Any], bool], str]  # (test, what is allowed, in words)


def _at_least(low: float) -> Limit:
    return (lambda v: v >= low, f">= {low}")


def _between(low: float, high: float, high_open: bool = False) -> Limit:
    if high_open:
        return (lambda v: low <= v < high, f"in [{low}, {high})")
    return (lambda v: low <= v <= high, f"in [{low}, {high}]")


# Limits beyond the type (the type comes from the field's annotation). Keys: "section.key".
LIMITS: dict[str, Limit] = {
    **{f"data.{k}": _at_least(1) for k in ("visual_dim", "text_dim", "max_desc_len", "max_frames", "n_clips")},
    "data.val_from_train": _between(0.0, 1.0, high_open=True), "data.num_workers": _at_least(-1),
    **{f"model.{k}": _at_least(1) for k in ("visual_dim", "text_dim", "hidden_size", "n_heads", "max_desc_len",
                                            "max_frames", "n_clips", "n_proxies")},
    "model.input_drop": _between(0.0, 1.0, high_open=True), "model.drop": _between(0.0, 1.0, high_open=True),
    "model.sft_factor": (lambda v: v > 0, "> 0"), "model.initializer_range": _at_least(0.0),
    "model.alpha": _between(0.0, 1.0),
    "loss.margin": _at_least(0.0), "loss.pm_weight": _at_least(0.0), "loss.da_weight": _at_least(0.0),
    "loss.hard_pool_size": _at_least(1), "loss.evidential_weight": _at_least(0.0),
    "loss.evidential_k": _at_least(2), "loss.evidential_tau": (lambda v: v > 0, "> 0"),
    "train.lr": (lambda v: v > 0, "> 0"), "train.warmup": _between(0.0, 1.0), "train.weight_decay": _at_least(0.0),
    "train.grad_clip": _at_least(0.0), "train.batch_size": _at_least(1), "train.n_epoch": _at_least(1),
    "train.patience": _at_least(0), "train.hard_negative_start_epoch": _at_least(0), "train.seed": _at_least(0),
    "train.amp": (lambda v: v in ("auto", "none", "bf16", "fp16"), "one of auto, none, bf16, fp16"),
    "train.eval_query_chunk": _at_least(1), "train.eval_video_chunk": _at_least(1),
}
# settings that must agree with others of the same section: (test, message)
CROSS_CHECKS: dict[str, list[tuple[Callable[[Any], bool], Callable[[Any], str]]]] = {
    "model": [(lambda m: m.hidden_size % m.n_heads == 0,
               lambda m: f"model.hidden_size={m.hidden_size} must be divisible by model.n_heads={m.n_heads}")],
}
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _typed(name: str, type_name: str, value: Any, default: Any) -> Any:
    """``value`` as the field's type (an int is a valid float); ConfigError naming the setting otherwise."""
    def wrong(allowed: str) -> ConfigError:
        return ConfigError(f"{name}={shorten(value)}: expected {allowed}")

    if type_name == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
    elif type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong("a finite number")
        value = float(value)
    elif type_name == "str":
        if not isinstance(value, str):
            raise wrong("a string")
    elif type_name.startswith("list"):
        if (not isinstance(value, list) or len(value) != len(default)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in value)):
            raise wrong(f"a list of {len(default)} finite numbers")
        value = [float(v) for v in value]
    return value


def check_section(obj: Any, section: str) -> None:
    """Check (and normalise: int -> float where a float belongs) every value of one config section."""
    for f in dataclasses.fields(obj):
        name = f"{section}.{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = _typed(name, str(f.type), getattr(obj, f.name), default)
        test, allowed = LIMITS.get(name, (lambda v: True, ""))
        if not test(value):
            raise ConfigError(f"{name}={shorten(value)}: expected {allowed}")
        object.__setattr__(obj, f.name, value)
    for test, message in CROSS_CHECKS.get(section, []):
        if not test(obj):
            raise ConfigError(message(obj))


def checked(section: str) -> Callable[[type], type]:
    """Class decorator (below ``@dataclass``): values are checked whenever the section is built."""
    def wrap(cls: type) -> type:
        def __post_init__(self: Any) -> None:
            check_section(self, section)
        cls.__post_init__ = __post_init__
        return cls
    return wrap


def parse_setting(name: str, type_name: str, raw: str) -> Any:
    """A command-line string as the value of a setting of type ``type_name`` (checked afterwards)."""
    text = raw.strip()
    if type_name == "bool":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ConfigError(f"{name}={shorten(raw)}: expected one of {'/'.join(TRUE_WORDS + FALSE_WORDS)} (any case)")
    if type_name == "str":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return raw
        return value if isinstance(value, str) else raw
    if type_name == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name}={shorten(raw)}: expected an integer") from None
    if type_name == "float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{name}={shorten(raw)}: expected a number") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{name}={shorten(raw)}: expected a JSON list such as [0.1, 2]") from None


@dataclass
@checked("data")
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
    num_workers: int = 0               # DataLoader workers; -1: chosen from the machine (ralbook.workers)


@dataclass
@checked("model")
class ModelConfig:
    """GMMFormer v2 + RAL (docs/method.md, sections building blocks to MSRA); switches for the ablations."""

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
@checked("loss")
class LossConfig:
    """Weights of the training objective (docs/method.md#training-objective)."""

    margin: float = 0.1
    loss_factor: list[float] = field(default_factory=lambda: [0.05, 0.04, 8e-5, 0.09])
    neg_factor: list[float] = field(default_factory=lambda: [0.15, 32.0, 1.0])
    pm_weight: float = 0.004           # L_PM
    da_weight: float = 0.00025         # L_DA
    hard_pool_size: int = 20
    evidential_weight: float = 0.0     # evidential (Dirichlet) term over K candidates; 0 = off (the paper)
    evidential_k: int = 16             # K: candidate videos per query (the positive and the K-1 best others)
    evidential_tau: float = 0.05       # evidence = exp(clamp(score / tau)) (ralbook.losses.evidence)


@dataclass
@checked("train")
class TrainConfig:
    """Optimisation and run control (docs/method.md#optimisation, #settings-per-dataset)."""

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
    amp: str = "auto"                  # auto (bf16 where native, else none) | none | bf16 | fp16
    compile: bool = False
    deterministic: bool = False        # GPU: deterministic kernels only (slower); CPU runs are reproducible anyway
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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"name={shorten(self.name)}: expected a string")
        self.check()

    def check(self) -> None:
        """Every value of every section against its type and limits (ConfigError naming the first bad one)."""
        for name, section_cls in SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, section_cls):
                raise ConfigError(f"config section {name!r} is a {type(section).__name__}, expected its settings")
            check_section(section, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """The Config a dict describes (missing keys take their defaults); ConfigError naming what is wrong."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a dict of sections, got {type(d).__name__}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key == "name":
                kwargs[key] = value
                continue
            if key not in SECTIONS:
                raise ConfigError(f"unknown config section {shorten(key)}; expected one of {['name', *SECTIONS]}")
            if not isinstance(value, dict):
                raise ConfigError(f"config section {key!r} must be a dict of settings, got {type(value).__name__}")
            known = {f.name for f in dataclasses.fields(SECTIONS[key])}
            unknown = sorted(str(k) for k in set(value) - known)
            if unknown:
                raise ConfigError(f"unknown key(s) {shorten(unknown)} in config section {key!r}")
            kwargs[key] = SECTIONS[key](**value)
        return cls(**kwargs)

    def override(self, assignment: str) -> "Config":
        """Return a copy with one ``section.key=value`` assignment applied, parsed as the setting's type and
        checked with the whole config (ConfigError naming the key, the value and what is allowed)."""
        if "=" not in assignment:
            raise ConfigError(f"expected SECTION.KEY=VALUE, got {shorten(assignment)}")
        path, raw = assignment.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"expected SECTION.KEY=VALUE (e.g. train.lr=1e-4), got {shorten(assignment)}")
        section, key = parts
        new = copy.deepcopy(self)
        target = getattr(new, section, None) if section in SECTIONS else None
        if target is None:
            raise ConfigError(f"unknown config section {shorten(section)} in {shorten(assignment)}; expected one of "
                              f"{list(SECTIONS)}")
        fields_ = {f.name: f for f in dataclasses.fields(target)}
        if key not in fields_:
            near = difflib.get_close_matches(key, list(fields_), n=1, cutoff=0.5)
            hint = f"; did you mean {section}.{near[0]}?" if near else ""
            raise ConfigError(f"unknown key {shorten(key)} in config section {section!r}{hint} ({section} has: "
                              f"{', '.join(fields_)})")
        if section == "model" and key in SYNCED_FROM_DATA:
            raise ConfigError(f"model.{key} follows data.{key} (the collection's features): set data.{key} instead")
        value = parse_setting(f"{section}.{key}", str(fields_[key].type), raw)
        old = getattr(target, key)
        setattr(target, key, value)
        if section == "model" and key == "backbone" and value != old:  # a new backbone brings its recipe
            new.apply_backbone_recipe()
        new.sync()
        new.check()
        return new

    def apply_backbone_recipe(self) -> None:
        """Set the training recipe of ``model.backbone`` for this preset (``name``), from the backbone's public code."""
        for section, values in backbone_recipe(self.model.backbone, self.name).items():
            for key, value in values.items():
                setattr(getattr(self, section), key, copy.deepcopy(value))

    def sync(self) -> None:
        """Copy the values the data dictates (feature sizes, lengths) into the model config."""
        for key in SYNCED_FROM_DATA:
            setattr(self.model, key, getattr(self.data, key))


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig}
SYNCED_FROM_DATA = ("visual_dim", "text_dim", "max_desc_len", "max_frames", "n_clips")  # data.X -> model.X


def _paper(collection: str, feature: str, visual_dim: int, text_dim: int, drop: float, sft: float,
           alpha: float, lr: float, margin: float, loss_factor: list[float], neg_factor: list[float],
           n_epoch: int, patience: int) -> dict[str, Any]:
    return {
        "data": {"collection": collection, "feature": feature, "visual_dim": visual_dim, "text_dim": text_dim,
                 "data_root": "", "val_split": "val", "num_workers": -1},
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
    # CLIP features from `ralbook extract` (512-d frames and text tokens, ViT-B/32). Everything else is
    # the tvr preset's: TVR is the release closest in style to a user's own clips (short videos,
    # several captions each, moments of a few seconds). Name the collection with --collection.
    "clip": _paper("", "clip", 512, 512, 0.2, 0.09, 0.5, 3e-4, 0.1,
                   [0.05, 0.04, 8e-5, 0.09], [0.15, 32.0, 1.0], 150, 15),
    # Sized for two CPU cores and the bundled demo collection (data/demo).
    "demo": {
        "data": {"collection": "demo", "feature": "synthetic", "visual_dim": 64, "text_dim": 48,
                 "data_root": "data", "val_split": "val", "num_workers": 0},
        "model": {"hidden_size": 64, "n_heads": 4, "input_drop": 0.1, "drop": 0.1, "sft_factor": 0.09,
                  "alpha": 0.5},
        "loss": {"margin": 0.1, "loss_factor": [0.05, 0.04, 8e-5, 0.09], "neg_factor": [0.15, 32.0, 1.0],
                 "hard_pool_size": 20},
        # fp32 even where bf16 is native: for this small model (hidden 64) the casts cost more than the
        # products save (a demo run took 34-38 s in bf16, 30-33 s in fp32 on a CPU with AMX; README)
        "train": {"lr": 3e-4, "warmup": 0.01, "weight_decay": 0.01, "batch_size": 32, "n_epoch": 10,
                  "patience": 5, "hard_negative_start_epoch": 5, "seed": 9527, "amp": "none"},
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
        raise ConfigError(f"model.backbone={shorten(backbone)}: unknown backbone; choose one of {list(BACKBONES)}")
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


def require_data_root(cfg: Config) -> None:
    """The paper presets name no data folder (and ``clip`` no collection): the user must give them."""
    if not cfg.data.data_root:
        raise RalbookError(f"no data root for collection {cfg.data.collection!r}: pass --data-root ROOT (the folder "
                           f"that holds {cfg.data.collection}/) or set data.data_root")
    if not cfg.data.collection:
        raise RalbookError("no collection named: pass --collection NAME (the folder under the data root)")


Overrides = Union[Mapping[str, Any], Iterable[str]]


def override_strings(overrides: Overrides) -> list[str]:
    """``{"model.msra": False}`` -> ``["model.msra=false"]`` (JSON values); a list of strings is kept as is.

    Notebooks take the dict form: papermill cannot parse '=' inside a parameter's value.
    """
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return [str(o) for o in overrides]


def build_config(preset_name: str = "demo", data_root: str = "", collection: str = "", feature: str = "",
                 epochs: int = 0, seed: Optional[int] = None, device: str = "", hidden_size: int = 0,
                 overrides: Overrides = ()) -> Any:
    """A Config from a preset plus the knobs notebooks expose (0 / '' / None = keep the preset's value).

    A relative ``data_root`` is resolved against the repository root (see :func:`resolve_path`);
    ``overrides`` sets any other value, as ``{"section.key": value}`` or ``["section.key=value"]``.
    """

    assignments = override_strings(overrides)
    # a backbone brings its training recipe: set it first, so that the knobs and other overrides win
    try:
        cfg = preset(preset_name)
        for assignment in (a for a in assignments if a.split("=", 1)[0].strip() == "model.backbone"):
            cfg = cfg.override(assignment)
    except (KeyError, ValueError) as err:
        raise RalbookError(str(err)) from err
    if data_root:
        cfg.data.data_root = data_root
    cfg.data.data_root = str(resolve_path(cfg.data.data_root)) if cfg.data.data_root else cfg.data.data_root
    for value, section, key in ((collection, "data", "collection"), (feature, "data", "feature"),
                                (epochs, "train", "n_epoch"), (seed, "train", "seed"), (device, "train", "device"),
                                (hidden_size, "model", "hidden_size")):
        if value not in ("", 0, None):
            setattr(getattr(cfg, section), key, value)
    for assignment in assignments:
        try:
            cfg = cfg.override(assignment)
        except (KeyError, ValueError) as err:
            raise RalbookError(f"bad override {assignment!r}: {err}") from err
    cfg.sync()
    cfg.check()  # the knobs above are set directly: check them with the rest
    return cfg
