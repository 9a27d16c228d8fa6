"""``train.amp=auto`` on a CPU, decided by measurement: is a bf16 matrix product clearly faster here?

Why: a list of CPU flags cannot know every CPU. AMX CPUs run bf16 products about 12x faster than fp32;
an AMD EPYC with AVX512-BF16 and no AMX ran them 4-5x faster (bf16 training 2.2x faster there); an Intel
Xeon with AVX512-BF16 and no AMX ran them no faster than fp32 (README, "Speed and memory"). So at first
use ralbook times one fp32 and one bf16 product of a model-like shape (the feed-forward product of a
batch of clip tokens, about 0.1-0.5 s in all) and chooses bf16 when it is at least
:data:`BF16_RULE` times faster. The result is cached per machine (CPU model and flags) and torch
version in ``amp_probe.json`` under the user cache folder (``RALBOOK_CACHE_DIR``, else
``$XDG_CACHE_HOME/ralbook``, else ``~/.cache/ralbook``), so later runs decide at once and alike.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ralbook.runtime.environment import machine_key

BF16_RULE = 1.5          # bf16 is chosen when its product is at least this many times faster than fp32
CACHE_FILE = "amp_probe.json"
CACHE_VARIABLE = "RALBOOK_CACHE_DIR"
DEFAULT_HIDDEN = 384     # the tvr preset's hidden size
ROWS = 2048              # rows of the probe product (64 videos x 32 clips)


def cache_dir(env: Optional[dict[str, str]] = None) -> Path:
    """Where measurements are cached: RALBOOK_CACHE_DIR, else $XDG_CACHE_HOME/ralbook, else ~/.cache/ralbook."""
    env = os.environ if env is None else env
    if env.get(CACHE_VARIABLE):
        return Path(env[CACHE_VARIABLE])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ralbook"


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: kernel choice, packing buffers
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bf16_ratio(hidden: int = DEFAULT_HIDDEN, rows: int = ROWS, repeats: int = 3) -> dict[str, Any]:
    """fp32 time / bf16 time of a (rows x hidden) @ (hidden x 4 hidden) product on the CPU, best of ``repeats``."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, hidden, generator=gen)
    b = torch.randn(hidden, 4 * hidden, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()
    with torch.no_grad():
        fp32 = _best_seconds(lambda: a @ b, repeats)
        bf16 = _best_seconds(lambda: a16 @ b16, repeats)
    return {"ratio": round(fp32 / bf16, 3), "fp32_s": fp32, "bf16_s": bf16,
            "shape": [rows, hidden, 4 * hidden], "threads": torch.get_num_threads(), "rule": BF16_RULE}


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again


def probe(hidden: int = DEFAULT_HIDDEN, directory: Optional[Path] = None,
          measure: Callable[[int], dict[str, Any]] = measure_bf16_ratio) -> dict[str, Any]:
    """The cached measurement for this machine, torch version and hidden size, measured and cached when missing.
    Adds ``cached`` (whether it came from the cache) and ``machine``."""
    path = (directory or cache_dir()) / CACHE_FILE
    key = f"{machine_key()} hidden {hidden}"
    cache = _read_cache(path)
    if key in cache and isinstance(cache[key], dict) and "ratio" in cache[key]:
        return {**cache[key], "cached": True, "machine": machine_key()}
    result = measure(hidden)
    cache[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: decide from this measurement, measure again next time
    return {**result, "cached": False, "machine": machine_key()}


def bf16_is_faster(result: dict[str, Any]) -> bool:
    """The rule: bf16 when its product ran at least BF16_RULE times faster than fp32."""
    return float(result["ratio"]) >= BF16_RULE
