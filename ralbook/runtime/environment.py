"""The machine a run ran on, recorded with its results.

Why: the same seed trains a slightly different model on another CPU (kernels are chosen by CPU family,
thread count and precision), so a number without its machine cannot be compared or reproduced. A run's
``config.json`` holds this record under the key ``environment`` (not a setting: resuming and comparing
configurations ignore it); the demo's ``results.json`` and ``figures/RESULTS.md`` carry it on.

What must match for "same seed, same run" (README): CPU model and flags, threads, torch version and
precision; Python and ralbook versions and the DataLoader worker count are recorded for the reader.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ralbook import __version__

# The CPU flags that change which kernels torch runs (vector width, bf16 instructions, AMX tiles).
RELEVANT_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
ENVIRONMENT_KEY = "environment"
PRECISION_NAMES = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def _cpuinfo_lines(cpuinfo: Path) -> list[str]:
    try:
        return cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (/proc/cpuinfo), else what Python's platform module knows."""
    for line in _cpuinfo_lines(cpuinfo):
        if line.startswith("model name") and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """Which of :data:`RELEVANT_FLAGS` the CPU has, in that order (empty where /proc/cpuinfo is missing)."""
    for line in _cpuinfo_lines(cpuinfo):
        if line.startswith("flags") and ":" in line:
            words = set(line.split(":", 1)[1].split())
            return [f for f in RELEVANT_FLAGS if f in words]
    return []


@functools.lru_cache(maxsize=None)
def machine_key() -> str:
    """CPU model, flags and torch version in one string: what a cached measurement is valid for."""
    return f"{cpu_model()} [{' '.join(cpu_flags())}] torch {torch.__version__}"


def environment_record(precision: str, device: str = "cpu", num_workers: Optional[int] = None,
                       amp_probe: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The record stored with a run: machine, versions, threads actually used, precision (``none``/``bf16``/
    ``fp16`` as in train.amp), DataLoader workers and, when ``auto`` measured it, the bf16 speed ratio."""
    record: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "ralbook": __version__,
        "device": device, "precision": PRECISION_NAMES.get(precision, precision)}
    if device.startswith("cuda") and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if num_workers is not None:
        record["num_workers"] = num_workers
    if amp_probe:
        record["amp_probe"] = dict(amp_probe)
    return record


def environment_lines(record: Mapping[str, Any]) -> list[str]:
    """Markdown table rows ``| what | value |`` of a record (for RESULTS.md)."""
    flags = ", ".join(record.get("cpu_flags") or []) or "none of " + ", ".join(RELEVANT_FLAGS)
    rows = [("CPU", f"{record.get('cpu_model', '?')} (flags: {flags})"),
            ("threads used", record.get("threads", "?")), ("precision", record.get("precision", "?")),
            ("torch / Python / ralbook", f"{record.get('torch', '?')} / {record.get('python', '?')} / "
                                         f"{record.get('ralbook', '?')}")]
    if "gpu" in record:
        rows.insert(1, ("GPU", record["gpu"]))
    if "num_workers" in record:
        rows.append(("DataLoader workers", record["num_workers"]))
    probe = record.get("amp_probe")
    if probe and probe.get("ratio") is not None:
        rows.append(("bf16 / fp32 matrix-product speed (train.amp=auto)", f"{probe['ratio']:.2f}x"))
    return [f"| {what} | {value} |" for what, value in rows]
