"""A generated demo collection of a few videos and a small untrained model for it, shared by unit tests.

Tests import it as ``from micro import micro_model`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ralbook.config import ModelConfig
from ralbook.data.collection import Collection
from ralbook.data.demo import generate_demo
from ralbook.model import build_model


def micro_model(root: Path, n_test: int, seed: int, hidden_size: int = 16) -> tuple[Collection, Any]:
    """Generate a 3/2/``n_test``-video demo collection under ``root``; an untrained model seeded ``seed``."""
    generate_demo(root, n_train=3, n_val=2, n_test=n_test)
    coll = Collection(root, "demo")
    torch.manual_seed(seed)
    model = build_model(ModelConfig(visual_dim=coll.visual_dim, text_dim=coll.text_dim, hidden_size=hidden_size,
                                    n_heads=2, input_drop=0.0, drop=0.0)).eval()
    return coll, model
