"""Training the variants of a sweep by running the training notebook once per variant.

Two rules keep a sweep's table honest:

* a variant whose run directory already holds a model is reused only when the run's stored configuration
  is the one requested now (the same check as ``train --resume``); otherwise the sweep refuses, naming the
  differing settings, instead of reporting an old run under a new heading;
* two variants with the same configuration (e.g. ``full`` and ``gmmformer_v2+RAL`` with the same seed) are
  trained once: the second reuses the first's run directory.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ralbook.config import build_config
from ralbook.errors import RalbookError
from ralbook.training.rundir import RESUMABLE_CHANGES, config_differences, read_run_config
from ralbook.workbook import pipeline


@dataclass
class SweepRuns:
    """Where each variant's run is (``runs``: name -> run directory) and which variants were trained now."""

    runs: dict[str, Path] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    reused: dict[str, Path] = field(default_factory=dict)   # variant -> another variant's identical run


def variant_config(parameters: Mapping[str, Any], overrides: Mapping[str, Any]) -> Any:
    """The configuration notebook 02 builds for these shared parameters and a variant's overrides."""
    return build_config(parameters.get("preset", "demo"), data_root=parameters.get("data_root", ""),
                        collection=parameters.get("collection", ""), feature=parameters.get("feature", ""),
                        epochs=parameters.get("epochs", 0), seed=parameters.get("seed"),
                        device=parameters.get("device", "auto"), hidden_size=parameters.get("hidden_size", 0),
                        overrides=dict(overrides))


def _identity(cfg: Any) -> dict[str, Any]:
    """The settings that decide what a run learns (those ``train --resume`` may not change)."""
    out: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items() if (section, k) not in RESUMABLE_CHANGES}
        else:
            out[section] = values
    return out


def check_stored_run(run: Path, name: str, cfg: Any) -> None:
    """RalbookError when ``run`` was trained with other settings than ``cfg`` (naming each difference)."""
    stored = read_run_config(run)
    differences = config_differences(stored.to_dict(), cfg.to_dict())
    if differences:
        raise RalbookError(
            f"variant {name!r}: {run} holds a run trained with other settings ({'; '.join(differences)}); "
            f"reusing it would report the old run under the new settings. Delete {run} to train it again, or "
            f"choose another sweep_dir.")


def train_variants(train_notebook: str | os.PathLike, sweep: Path, variants: Mapping[str, Mapping[str, Any]],
                   reuse: Optional[Iterable[Path]] = None, **parameters: Any) -> SweepRuns:
    """Execute the training notebook once per distinct configuration into ``sweep / name``.

    ``parameters`` are the notebook's shared parameters; a variant's settings go in as its ``overrides``.
    A variant already trained in ``sweep / name`` is reused when its stored configuration matches (else
    RalbookError); a variant whose configuration equals another's, in this call or among the trained runs
    in ``reuse``, uses that run.
    """
    out = SweepRuns()
    known: list[tuple[dict[str, Any], Path]] = []
    for run in reuse or ():
        if pipeline.has_model(run):
            known.append((_identity(read_run_config(run)), Path(run)))
    for name, extra in variants.items():
        cfg = variant_config(parameters, extra)
        identity = _identity(cfg)
        run = sweep / name
        if pipeline.has_model(run):
            check_stored_run(run, name, cfg)
            print(f"{name}: reusing {run} (its stored settings match)")
        else:
            twin = next((path for ident, path in known if ident == identity), None)
            if twin is not None:
                print(f"{name}: same settings as {twin.name}, reusing that run (one training, two rows)")
                out.runs[name], out.reused[name] = twin, twin
                continue
            started = time.perf_counter()
            pipeline.run_notebook(train_notebook, run / "02_train_executed.ipynb", {
                **parameters, "run_dir": str(run), "overrides": dict(extra), "progress": False,
                "summary_path": str(run / "02_train_summary.json")})
            out.trained.append(name)
            print(f"{name}: trained in {time.perf_counter() - started:.0f} s")
        out.runs[name] = run
        known.append((identity, run))
    return out


def evaluate_variants(runs: Mapping[str, Path], split: str = "test", device: str = "auto",
                      data_root: str = "") -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per variant name (a run shared by two variants is evaluated once)."""
    by_path: dict[Path, dict[str, dict[str, float]]] = {}
    out = {}
    for name, run in runs.items():
        if run not in by_path:
            by_path[run] = next(iter(pipeline.evaluate_runs([run], split, device=device, data_root=data_root)
                                     .values()), None)
        if by_path[run] is not None:
            out[name] = by_path[run]
    return out
