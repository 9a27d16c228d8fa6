"""A run's checkpoints: what best.pt and last.pt hold, writing them, and resuming exactly from last.pt.

Why a module of its own: the training loop (training/trainer.py) only says *when* to save and restore;
*what* a checkpoint holds and how a damaged or foreign one is refused lives here, next to the rest of the
run directory's formats (training/rundir.py), so that a change of format touches one file.

* ``best.pt``: model weights, configuration, the epoch and its validation metrics (``MODEL_FORMAT``);
* ``last.pt``: the whole training state (``STATE_FORMAT``): model, optimizer (with its schedule position),
  gradient scaler, :class:`~ralbook.training.rundir.TrainState`, the loss sums of the epoch in progress and
  the random states, so that a resumed run ends with the same numbers as an uninterrupted one.

Both are written atomically with a content hash (ralbook.checkpoint), by the caller's rank 0 only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from ralbook.checkpoint import (FORMAT_VERSION, MODEL_FORMAT, STATE_FORMAT, check_finite_state, load_model_state,
                                read_ralbook, with_content_hash)
from ralbook.config import Config
from ralbook.errors import CheckpointError, RalbookError, shorten
from ralbook.files import save_atomic
from ralbook.training.reproducibility import rng_state, set_rng_state
from ralbook.training.rundir import BEST_FILE, LAST_FILE, TrainState, config_differences, train_state_from


@dataclass
class Resumed:
    """What last.pt gives back besides the weights and optimizer loaded in place: where the run stands and the
    loss sums of the epoch in progress."""

    state: TrainState
    part_names: list[str]
    sums: Optional[Tensor]


def tensors_of(obj: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """(path, tensor) of every tensor inside nested dicts and lists (an optimizer state)."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors_of(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensors_of(value, f"{prefix}[{i}]")


def save_best(run_dir: Path, cfg: Config, model: torch.nn.Module, epoch: int,
              val: dict[str, dict[str, float]]) -> None:
    """best.pt: the weights of the best validation epoch, with the configuration that builds the model."""
    save_atomic(with_content_hash({"format": MODEL_FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(),
                                   "model": model.state_dict(), "epoch": epoch, "val_metrics": val}),
                run_dir / BEST_FILE)


def training_state(cfg: Config, model: torch.nn.Module, optimizer: Any, scaler: Any, state: TrainState,
                   part_names: list[str], sums: Optional[Tensor], train_videos: int) -> dict[str, Any]:
    """The dict last.pt holds (plain values, tensors on the CPU for the sums)."""
    return {
        "format": STATE_FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": dataclasses.asdict(state), "part_names": list(part_names),
        "sums": None if sums is None else sums.detach().cpu(),
        "rng": rng_state(), "train_videos": train_videos,
    }


def save_last(run_dir: Path, **parts: Any) -> None:
    """last.pt from :func:`training_state`'s arguments (given by name)."""
    save_atomic(with_content_hash(training_state(**parts)), run_dir / LAST_FILE)


def restore_last(path: Path, run_dir: Path, cfg: Config, model: torch.nn.Module, optimizer: Any, scaler: Any,
                 train_videos: int, device: torch.device) -> Resumed:
    """Load last.pt into ``model``, ``optimizer``, ``scaler`` and the random generators; the position it holds.

    Refused before anything changes when the configuration or the training videos differ from the run's, or
    the file is malformed (CheckpointError / RalbookError naming the file); the random states are put back
    when the optimizer or RNG state fails half-way.
    """
    ckpt, saved = read_ralbook(path, (STATE_FORMAT,))
    diffs = config_differences(saved.to_dict(), cfg.to_dict())
    if diffs:
        raise RalbookError(f"cannot resume {run_dir}: the configuration differs from the run's: "
                           + "; ".join(diffs[:6]))
    if ckpt["train_videos"] != train_videos:
        raise CheckpointError(f"cannot resume {run_dir}: it trained on {ckpt['train_videos']} videos, "
                              f"the collection now gives {train_videos}")
    state = train_state_from(ckpt["state"], path)
    sums, names = ckpt.get("sums"), ckpt["part_names"]
    if not (sums is None or torch.is_tensor(sums)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: 'sums' must be a tensor or None and 'part_names' a list of names")
    load_model_state(model, ckpt["model"], path)
    check_finite_state(dict(tensors_of(ckpt["optimizer"])), f"checkpoint {path}", "optimizer state")
    before = rng_state()
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError) as err:
        set_rng_state(before)
        raise CheckpointError(f"{path}: its optimizer or random-number state is malformed "
                              f"({type(err).__name__}: {shorten(str(err), 200)})") from err
    return Resumed(state, list(names), sums.to(device) if sums is not None else None)


def load_best(model: torch.nn.Module, run_dir: Path) -> int:
    """Put best.pt's weights into ``model``; the epoch they come from."""
    best, _ = read_ralbook(run_dir / BEST_FILE, (MODEL_FORMAT,))
    load_model_state(model, best["model"], run_dir / BEST_FILE)
    return int(best["epoch"])
