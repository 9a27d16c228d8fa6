"""Which videos train, validate and test, and warnings when splits overlap."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ralbook.config import Config
from ralbook.data.collection import caption_leaks
from ralbook.errors import DataError, RalbookError


@dataclass
class Splits:
    """Which videos train, and which videos/captions select the model."""

    train_videos: list[str]
    val_videos: list[str]
    val_captions: list[str]
    val_name: str  # caption file the validation captions come from


def carve_validation(videos: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split videos (not captions) into (train, val) with a seeded permutation; both keep the input order."""
    if not 0.0 < fraction < 1.0:
        raise RalbookError(f"data.val_from_train must be a fraction in (0, 1), got {fraction}")
    if len(videos) < 2:
        raise DataError(f"cannot carve a validation set out of {len(videos)} training video(s)")
    n_val = min(len(videos) - 1, max(1, round(fraction * len(videos))))
    chosen = set(np.random.default_rng(seed).permutation(len(videos))[:n_val].tolist())
    train = [v for i, v in enumerate(videos) if i not in chosen]
    val = [v for i, v in enumerate(videos) if i in chosen]
    return train, val


def overlap_warning(collection: Any, name: str, val_split: str, test_split: str = "test") -> Optional[str]:
    """A warning text when the val and test caption files share captions (model selection on test data)."""
    try:
        val = {c for c, _ in collection.captions(val_split)}
        test = {c for c, _ in collection.captions(test_split)}
    except (DataError, FileNotFoundError):
        return None
    shared = len(val & test)
    if not shared:
        return None
    what = f"hold the same {shared} captions" if val == test else f"share {shared} of {len(val)} captions"
    return (f"the {val_split} and {test_split} caption files of collection {name!r} {what}: selecting the model "
            f"on {val_split} then selects it on the test set. For honest model selection carve validation videos "
            f"out of the training set: --set data.val_from_train=0.1")


def plan_splits(collection: Any, cfg: Config) -> Splits:
    """Training videos and validation set: the release's val file, or videos held out of train."""

    train_videos = collection.videos("train")
    for other in dict.fromkeys(["test"] if cfg.data.val_from_train > 0 else [cfg.data.val_split, "test"]):
        leak = caption_leaks(collection, "train", other) if other != "train" else None
        if leak:
            warnings.warn(leak, UserWarning, stacklevel=3)
    if cfg.data.val_from_train > 0:
        train_videos, val_videos = carve_validation(train_videos, cfg.data.val_from_train, cfg.train.seed)
        held = set(val_videos)
        captions = [c for c, _ in collection.captions("train") if collection.video_of(c) in held]
        return Splits(train_videos, val_videos, captions, "train")
    message = overlap_warning(collection, cfg.data.collection, cfg.data.val_split)
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    return Splits(train_videos, collection.videos(cfg.data.val_split),
                  [c for c, _ in collection.captions(cfg.data.val_split)], cfg.data.val_split)
