"""The run directory's files (config.json, metrics.jsonl, best.pt/last.pt) and opening a run."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ralbook.checkpoint import MODEL_FORMAT, load_model_state, model_from_checkpoint, read_ralbook
from ralbook.config import Config
from ralbook.data.collection import Collection, check_dims
from ralbook.errors import CheckpointError, RalbookError, shorten
from ralbook.files import resolve_path, write_atomic
from ralbook.model import build_model
from ralbook.runtime.device import resolve_device
from ralbook.runtime.environment import ENVIRONMENT_KEY
from ralbook.runtime.threads import configure_threads


PathLike = Union[str, os.PathLike]


CONFIG_FILE, METRICS_FILE, BEST_FILE, LAST_FILE, TEST_FILE = (
    "config.json", "metrics.jsonl", "best.pt", "last.pt", "test_metrics.json")


# settings that may change between a run and its resumption (where the data lives, the machine)
RESUMABLE_CHANGES = {("data", "data_root"), ("data", "num_workers"), ("train", "device"), ("train", "deterministic")}


@dataclass
class TrainState:
    """Where a run stands; saved in last.pt (plain numbers and dicts only)."""

    epoch: int = 0                 # epoch in progress (or the next one, when step_in_epoch == 0)
    step_in_epoch: int = 0         # batches of ``epoch`` already done
    global_step: int = 0
    best_sumr: float = -math.inf   # -inf: the first epoch always becomes best.pt
    best_epoch: int = -1
    best_val: dict = field(default_factory=dict)
    bad_epochs: int = 0
    stopped_early: bool = False
    finished: bool = False
    elapsed_s: float = 0.0         # wall time spent in training so far (informative only)


def read_metrics(run_dir: PathLike) -> list[dict[str, Any]]:
    """The epoch records of a run (metrics.jsonl), in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    write_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


def record_epoch(run_dir: Path, record: dict[str, Any]) -> None:
    """metrics.jsonl with ``record`` as its last line; the lines of this epoch and later ones are replaced
    (a run resumed from within an epoch records it once)."""
    records = [r for r in read_metrics(run_dir) if r["epoch"] < record["epoch"]] + [record]
    _write_metrics(run_dir, records)


def test_record(result: Any, epoch: int) -> dict[str, Any]:
    """test_metrics.json's content: metrics of best.pt (from ``epoch``) on the test split with the per-query
    ranks, so that `ralbook compare` pairs runs query by query without evaluating them again."""
    return {"split": "test", "epoch": epoch, "n_queries": len(result.cap_ids), "n_videos": len(result.video_ids),
            "metrics": result.metrics, "cap_ids": list(result.cap_ids),
            "ranks": {kind: [int(r) for r in ranks] for kind, ranks in result.ranks.items()}}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``section.key: run has X, now Y`` for every setting of ``current`` that differs from the stored run's,
    except RESUMABLE_CHANGES (where the data lives, the device...): a resume or a reused sweep run with any
    other difference would report the old run under new settings."""
    out = []
    for section, values in current.items():
        if not isinstance(values, dict):
            if saved.get(section) != values:
                out.append(f"{section}: run has {saved.get(section)!r}, now {values!r}")
            continue
        for key, value in values.items():
            before = saved.get(section, {}).get(key)
            if (section, key) not in RESUMABLE_CHANGES and before != value:
                out.append(f"{section}.{key}: run has {before!r}, now {value!r}")
    return out


def train_state_from(d: Any, path: PathLike) -> TrainState:
    """The TrainState a checkpoint holds, each value of its field's type; CheckpointError otherwise."""
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,)}
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: 'state' is a {type(d).__name__}, expected a dict")
    names = {f.name: f for f in dataclasses.fields(TrainState)}
    unknown = sorted(str(k) for k in set(d) - set(names))
    if unknown:
        raise CheckpointError(f"{path}: unknown key(s) {shorten(unknown)} in its training state")
    for key, value in d.items():
        want = kinds[str(names[key].type)]
        if not isinstance(value, want) or (bool not in want and isinstance(value, bool)):
            raise CheckpointError(f"{path}: training state {key}={shorten(value)} is not of type {names[key].type}")
    return TrainState(**d)


def read_run_config(run_dir: PathLike) -> Config:
    """The configuration a run directory holds (config.json, without the record of how it was distributed);
    RalbookError naming the file when it cannot."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RalbookError(f"nothing to resume in {run_dir}: it holds no {CONFIG_FILE}")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(saved, dict):
            saved.pop("distributed", None)  # the record of how the run was distributed, not a setting
            saved.pop(ENVIRONMENT_KEY, None)  # the record of the machine (ralbook.runtime.environment), not a setting
        return Config.from_dict(saved)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError and ConfigError are ValueErrors
        raise RalbookError(f"{path} is not a valid ralbook configuration: {shorten(str(err), 200)}") from err


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> bool:
    """Check the run directory against ``resume``; True when there is a last.pt to resume from."""
    has_run = any((run_dir / name).exists() for name in (LAST_FILE, BEST_FILE, METRICS_FILE))
    if resume:
        diffs = config_differences(read_run_config(run_dir).to_dict(), cfg.to_dict())
        if diffs:
            raise RalbookError(f"cannot resume {run_dir}: the configuration differs from the run's: "
                               + "; ".join(diffs[:6]))
        if (run_dir / LAST_FILE).exists():
            return True
        if (run_dir / METRICS_FILE).exists() and read_metrics(run_dir):
            raise CheckpointError(f"{run_dir} has epoch records but no {LAST_FILE}: cannot resume exactly")
        return False
    if has_run:
        raise RalbookError(f"{run_dir} already holds a run; resume it (--resume) or choose another directory")
    return False


def _recorded_amp(run_dir: Path) -> Optional[str]:
    """train.amp of the run's config.json, if it has a readable one."""
    try:
        return read_run_config(run_dir).train.amp
    except RalbookError:
        return None  # _prepare_run_dir reports what is wrong with the file


def _run_config(cfg: Config, world: Any, resume: bool, run_dir: Path) -> dict[str, Any]:
    """config.json: the configuration, plus {"distributed": {world_size, backend}} of the latest (re)start
    when the run is or was distributed."""
    out = cfg.to_dict()
    was_distributed = resume and "distributed" in json.loads((run_dir / CONFIG_FILE).read_text())
    if world.distributed or was_distributed:
        out["distributed"] = {"world_size": world.size, "backend": world.backend}
    return out


def load_run(run_dir: PathLike, device: Optional[Union[str, torch.device]] = None) -> tuple[Config, Any]:
    """(config, model in eval mode) from a run's best.pt."""

    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} holds no {BEST_FILE}: has training finished its first epoch?")
    ckpt, cfg = read_ralbook(path, (MODEL_FORMAT,))
    model = build_model(cfg.model)
    load_model_state(model, ckpt["model"], path)
    if device is not None:
        model.to(resolve_device(device) if isinstance(device, str) else device)
    return cfg, model.eval()


def open_run(run_dir: str | os.PathLike, device: str = "auto", data_root: str = "", collection: str = "",
             feature: str = "") -> tuple[Any, Any, Any]:
    """(config, model in eval mode on ``device``, Collection) of a run; data location overridable."""

    cfg, model = load_run(resolve_path(run_dir))
    return _with_data(cfg, model, device, data_root, collection, feature, Collection, check_dims, resolve_device)


def open_checkpoint(checkpoint: str | os.PathLike, preset_name: str = "", device: str = "auto", data_root: str = "",
                    collection: str = "", feature: str = "") -> tuple[Any, Any, Any]:
    """Like :func:`open_run` for a single checkpoint file (a ralbook one, or the authors' with ``preset_name``)."""

    cfg, model, _ = model_from_checkpoint(resolve_path(checkpoint), preset_name or None)
    return _with_data(cfg, model, device, data_root, collection, feature, Collection, check_dims, resolve_device)


def _with_data(cfg: Any, model: Any, device: str, data_root: str, collection: str, feature: str,
               collection_cls: Any, check_dims: Any, resolve_device: Any) -> tuple[Any, Any, Any]:

    configure_threads()  # notebooks that only evaluate: threads chosen from the load too
    if data_root:
        cfg.data.data_root = data_root
    cfg.data.data_root = str(resolve_path(cfg.data.data_root or "data"))
    if collection:
        cfg.data.collection = collection
    if feature:
        cfg.data.feature = feature
    coll = collection_cls.from_config(cfg.data)
    check_dims(cfg, coll)
    model.to(resolve_device(device or cfg.train.device)).eval()
    return cfg, model, coll
