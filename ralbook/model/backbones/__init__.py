"""One module per backbone, each behind the interface of ``base.Backbone``; ``build_model`` picks one."""
from __future__ import annotations

import torch.nn as nn

from ralbook.config import ModelConfig
from ralbook.errors import ConfigError
from ralbook.model.backbones.base import Backbone
from ralbook.model.backbones.gmmformer import GMMFormer
from ralbook.model.backbones.gmmformer_v2 import GMMFormerV2
from ralbook.model.backbones.ms_sl import MSSL
from ralbook.model.gmm import WINDOW_MODES

BACKBONES: dict[str, type[Backbone]] = {"gmmformer_v2": GMMFormerV2, "gmmformer": GMMFormer, "ms_sl": MSSL}


def build_model(cfg: ModelConfig) -> Backbone:
    """Build a freshly initialised model of ``cfg.backbone`` (RAL's parts as the switches say)."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: expected one of {sorted(BACKBONES)}, got {str(cfg.backbone)[:80]!r}")
    if cfg.gmm_windows not in WINDOW_MODES:
        raise ConfigError(f"model.gmm_windows: expected one of {list(WINDOW_MODES)}, got {str(cfg.gmm_windows)[:80]!r}")
    return BACKBONES[cfg.backbone](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
