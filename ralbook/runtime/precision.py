"""Mixed precision: what a ``train.amp`` setting means on this device, and the autocast context.

``auto`` (the default) means bf16 autocast where bf16 is native and fast, fp32 elsewhere:

* CUDA GPUs of compute capability 8.0 or later (Ampere and newer) have bf16 tensor cores;
* on a CPU with bf16 instructions, by measurement (:mod:`ralbook.amp_probe`): bf16 when a bf16 matrix
  product of the model's size runs at least 1.5x faster than fp32 on this machine (cached per CPU and
  torch version). AMX CPUs and an AMD EPYC with AVX512-BF16 pass; an Intel Xeon with AVX512-BF16 and no
  AMX did not (README, "Speed and memory");
* x86 CPUs without bf16 instructions (AVX2 only) run fp32 without measuring: bf16 is emulated there,
  about 8x slower; Apple MPS runs fp32.

The README gives the measured effect of bf16 on the metrics. A run resolves ``auto`` once, at its
start, and records the result in its config.json (so a resumed run keeps its precision).
``RALBOOK_NATIVE_BF16=1`` or ``0`` overrides the detection (the test suite pins it to 0, so that
its numbers do not depend on the CPU it runs on).
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path
from typing import Optional

import torch

from ralbook.errors import RalbookError
from ralbook.runtime.amp_probe import BF16_RULE, DEFAULT_HIDDEN, bf16_is_faster, probe


AMP_MODES: tuple[str, ...] = ("auto", "none", "bf16", "fp16")
CPUINFO = Path("/proc/cpuinfo")
OVERRIDE_VARIABLE = "RALBOOK_NATIVE_BF16"


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> Optional[frozenset[str]]:
    """The bf16 instructions (``amx_bf16``, ``avx512_bf16``) /proc/cpuinfo names; None where it is unreadable."""
    try:
        words = set(cpuinfo.read_text().split())
    except OSError:
        return None
    return frozenset(words & {"amx_bf16", "avx512_bf16"})


def cpu_lacks_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True on an x86 Linux CPU without bf16 instructions (AVX512-BF16 or AMX), where bf16 is emulated."""
    flags = cpu_bf16_flags(cpuinfo)
    if flags is None:
        return False  # not Linux: no opinion
    return not flags and " avx2" in cpuinfo.read_text()


@functools.lru_cache(maxsize=None)
def _host_lacks_bf16() -> bool:  # read /proc/cpuinfo once, not at every autocast step
    return cpu_lacks_bf16()


@functools.lru_cache(maxsize=None)
def cpu_probe(hidden: int) -> dict:
    """The bf16/fp32 speed measurement of this machine (measured once per process, cached on disk)."""
    return probe(hidden)


def native_bf16(device: torch.device, hidden: Optional[int] = None) -> tuple[bool, str]:
    """(whether bf16 is native and fast on ``device``, the reason in words). ``hidden``: the model's hidden
    size, the shape of the CPU measurement (default: the tvr preset's)."""
    forced = os.environ.get(OVERRIDE_VARIABLE, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{OVERRIDE_VARIABLE}={forced}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor}) has bf16 tensor cores"
        return False, f"{name} (compute capability {major}.{minor}) has no bf16 tensor cores"
    if device.type == "cpu":
        if _host_lacks_bf16():
            return False, "this CPU has no bf16 instructions: bf16 is emulated and slower here"
        result = cpu_probe(int(hidden or DEFAULT_HIDDEN))
        fast = bf16_is_faster(result)
        how = "cached measurement" if result.get("cached") else "measured now"
        return fast, (f"a bf16 matrix product ran {result['ratio']:.2f}x as fast as fp32 on this CPU ({how}; "
                      f"bf16 from {BF16_RULE}x)")
    return False, f"bf16 autocast is not used by default on {device.type}"


def resolve_amp(amp: Optional[str], device: torch.device, hidden: Optional[int] = None) -> str:
    """The concrete mode (none, bf16, fp16) of a setting; ``auto`` becomes bf16 where native, else none."""
    if amp in ("", None):
        return "none"
    if amp not in AMP_MODES:
        raise RalbookError(f"unknown amp mode {amp!r}; use one of {', '.join(AMP_MODES)}")
    if amp == "auto":
        return "bf16" if native_bf16(device, hidden)[0] else "none"
    return amp


def describe_amp(amp: Optional[str], device: torch.device, setting: str = "train.amp",
                 hidden: Optional[int] = None) -> str:
    """One line for the start of a run: the precision, and why when it was chosen automatically.
    ``setting`` names where the value comes from."""
    mode = resolve_amp(amp, device, hidden)
    what = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[mode]
    if amp == "auto":
        other = "none" if mode == "bf16" else "bf16"
        return f"precision: {what} ({setting}=auto: {native_bf16(device, hidden)[1]}; --set train.amp={other} to change)"
    return f"precision: {what} ({setting}={mode})"


def autocast(device: torch.device, amp: Optional[str]) -> contextlib.AbstractContextManager:
    """Mixed-precision context: ``auto``, ``none``, ``bf16`` (any device) or ``fp16`` (CUDA/MPS only)."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type == "cpu":
        raise RalbookError("amp=fp16 needs a GPU (it relies on a gradient scaler); use amp=bf16 on CPU")
    if amp == "bf16" and device.type == "cpu" and _host_lacks_bf16():
        warnings.warn("this CPU has no bf16 instructions (no avx512_bf16/amx_bf16 in /proc/cpuinfo): bf16 autocast "
                      "is emulated and several times slower than fp32 here (measured 8x on an AVX2 machine); "
                      "use amp=none", RuntimeWarning, stacklevel=2)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
