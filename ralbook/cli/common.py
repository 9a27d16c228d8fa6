"""What several commands share: the data arguments, list options, and one path that loads what a command needs.

``load_for_command(args)`` is the only way evaluate, index, sigma-report, search and uncertainty turn
``--checkpoint`` (a file, or a run directory) into (configuration, model on its device, collection), so that
every command resolves a data root, applies ``--set`` and reports a size mismatch the same way.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ralbook.checkpoint import model_from_checkpoint
from ralbook.config import PRESETS, Config, require_data_root
from ralbook.data.collection import Collection, check_dims
from ralbook.errors import CheckpointError, ConfigError, RalbookError
from ralbook.files import repo_root
from ralbook.runtime.device import resolve_device
from ralbook.runtime.precision import resolve_amp
from ralbook.runtime.provenance import result_provenance
from ralbook.training.rundir import BEST_FILE

DEFAULT_RERANK = 100  # evaluate --index and search --index: candidates of the first stage given the fused score
RERANK_HELP = (f"with --index: the K best videos of the clip-scale stage are re-scored with the fused score "
               f"(default {DEFAULT_RERANK})")
DEVICE_HELP = "auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
# model settings that fix the shapes of the weights: a trained checkpoint cannot take other values
SHAPE_KEYS = ("backbone", "hidden_size", "n_heads", "n_proxies", "csa", "msra", "word_confidence")


def add_data_arguments(parser: argparse.ArgumentParser, overrides: bool = True) -> None:
    """Options shared by the commands that read a collection: where the data is, the device, --set."""
    parser.add_argument("--data-root", help="folder holding COLLECTION/ (default: the preset's, or the run's)")
    parser.add_argument("--collection", help="collection name, e.g. tvr, activitynet, charades, demo")
    parser.add_argument("--feature", help="visual feature folder under FeatureData/")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    if overrides:
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override any config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (per-epoch lines stay)")


def parse_list(text: str, item: type = str, option: str = "a list") -> list[Any]:
    """``"a,b c"`` -> ["a", "b", "c"]: every list option accepts commas, spaces or both."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [item(p) for p in parts]
    except ValueError as err:
        raise ConfigError(f"{option}: cannot read {text!r} as a list of {item.__name__}") from err


def apply_override(cfg: Config, assignment: str, what: str = "--set") -> Config:
    """One ``section.key=value`` on ``cfg`` (an unknown key names the nearest one and its section's keys)."""
    try:
        return cfg.override(assignment)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{what} {assignment}: {err}") from err


def data_assignments(args: argparse.Namespace) -> list[str]:
    """--data-root/--collection/--feature/--device as ``section.key=value`` strings (a given --data-root is
    made absolute from the working directory, like every path typed in a shell)."""
    out = []
    for flag, key in (("data_root", "data.data_root"), ("collection", "data.collection"),
                      ("feature", "data.feature"), ("device", "train.device")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag == "data_root":
            value = os.path.abspath(os.path.expanduser(value))
        out.append(f"{key}={json.dumps(value)}")
    return out


def apply_data_arguments(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply --data-root/--collection/--feature/--device/--set to a config (errors as ConfigError)."""
    for assignment in data_assignments(args) + list(getattr(args, "overrides", []) or []):
        cfg = apply_override(cfg, assignment)
    return cfg


def resolve_data_root(cfg: Config, source: str) -> Config:
    """The one rule for a stored data root: absolute paths stay; a relative one (an older run, a preset's
    ``data``) is taken from the repository root. A missing folder is an error that suggests --data-root."""
    require_data_root(cfg)
    root = Path(cfg.data.data_root).expanduser()
    if not root.is_absolute():
        root = repo_root() / root
    if not (root / cfg.data.collection).is_dir():
        raise RalbookError(f"{source}: data root {root} holds no collection {cfg.data.collection!r}; pass "
                           f"--data-root ROOT (the folder that holds {cfg.data.collection}/)")
    cfg.data.data_root = str(root)
    return cfg


def checkpoint_file(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's best.pt; RalbookError naming what is missing."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / BEST_FILE).is_file():
            raise CheckpointError(f"{p} is a folder without {BEST_FILE}: pass a run directory or a checkpoint file")
        return p / BEST_FILE
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file or run directory")
    return p


@dataclass
class Loaded:
    """What a command works on: the resolved configuration, the model on ``device`` (eval mode), the
    collection (None when not asked for), the checkpoint file and its kind (``ralbook`` or ``reference``)."""

    cfg: Config
    model: torch.nn.Module
    collection: Optional[Collection]
    device: torch.device
    checkpoint: Path
    kind: str

    def provenance(self, args: Optional[argparse.Namespace] = None, **fields: Any) -> dict[str, Any]:
        """What a result file records about its making (ralbook.runtime.provenance.result_provenance): this
        checkpoint (path, sha256), the precision and device used, the command line, plus ``fields``."""
        extra = fields.pop("extra", None) or {}
        return result_provenance(checkpoint=self.checkpoint, precision=resolve_amp(self.cfg.train.amp, self.device),
                                 device=str(self.device), argv=getattr(args, "argv", None),
                                 extra={"checkpoint_kind": self.kind, **extra}, **fields)


def _shape_changes(before: Config, after: Config) -> list[str]:
    return [f"model.{k}={getattr(before.model, k)!r} -> {getattr(after.model, k)!r}" for k in SHAPE_KEYS
            if getattr(before.model, k) != getattr(after.model, k)]


def load_for_command(args: argparse.Namespace, need_collection: bool = True,
                     preset_name: Optional[str] = None, checkpoint: Optional[str | os.PathLike] = None) -> Loaded:
    """checkpoint or run dir -> config with --set and data overrides -> data root -> collection -> size check
    -> model on the device (``args.device``, default auto).

    Reads ``checkpoint`` (default ``args.checkpoint``: another one for a command that loads several models,
    e.g. uncertainty's ensemble members, with the same data options) and, when present, ``args.preset``
    (for the authors' files), ``args.data_root``, ``args.collection``, ``args.feature``, ``args.device``,
    ``args.overrides``. A ``--set model.KEY`` that changes the weights' shapes is refused with one message
    saying why.
    """
    path = checkpoint_file(args.checkpoint if checkpoint is None else checkpoint)
    stored: list[Config] = []

    def adjust(cfg: Config) -> Config:
        stored.append(cfg)
        return apply_data_arguments(cfg, args)

    try:
        cfg, model, kind = model_from_checkpoint(path, preset_name or getattr(args, "preset", None), adjust=adjust)
    except CheckpointError as err:
        changes = _shape_changes(stored[0], apply_data_arguments(stored[0], args)) if stored else []
        if changes:
            raise ConfigError(f"{path}: {', '.join(changes)} cannot change for a trained checkpoint: the weights "
                              "were learnt with the stored value and their shapes follow it; train a new run "
                              "with this setting instead") from err
        raise
    if kind == "ralbook" and stored and _shape_changes(stored[0], cfg):
        raise ConfigError(f"{path}: {', '.join(_shape_changes(stored[0], cfg))} cannot change for a trained "
                          "checkpoint: the weights were learnt with the stored value; train a new run instead")
    collection = None
    if need_collection:
        cfg = resolve_data_root(cfg, str(path))
        collection = Collection.from_config(cfg.data)
        check_dims(cfg, collection)
    device = resolve_device(cfg.train.device)
    model.to(device).eval()
    return Loaded(cfg, model, collection, device, path, kind)


def preset_argument(parser: argparse.ArgumentParser, default: Optional[str] = None,
                    help_text: str = "configuration of an authors' checkpoint (ralbook checkpoints carry their own)"
                    ) -> None:
    """--preset with the same choices in every command."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default, help=help_text)


def flatten_list(values: Optional[list[str]]) -> Optional[list[str]]:
    """Items of a multi-value option, each of which may itself hold commas: ["a,b", "c"] -> ["a", "b", "c"]."""
    if values is None:
        return None
    return [item for value in values for item in parse_list(value)]
