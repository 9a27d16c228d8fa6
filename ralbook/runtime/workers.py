"""DataLoader worker processes: how many, chosen from the machine like the thread count.

Why: a worker is a process that needs a core. The paper presets asked for 4 workers, and on a 2-core
machine torch warns ("This DataLoader will create 4 worker processes ... suggested max number of
worker in current system is 2") and the workers take cores from the model's threads. ``data.num_workers``
is ``-1`` (auto) in the presets: the workers get the cores that neither the model's threads nor other
processes use, at most :data:`MAX_AUTO` (reading ralbook's memory-mapped features is light work); any value
>= 0 is used as given. The count used is recorded with the run (``environment.num_workers``).
"""
from __future__ import annotations

from typing import Optional

import torch

from ralbook.runtime.threads import busy_cores, configure_threads

AUTO = -1
MAX_AUTO = 4


def choose_workers(requested: int, cores: int, threads: int, busy: Optional[float] = None) -> int:
    """Workers for a DataLoader: ``requested`` when >= 0; for ``AUTO``, the cores left free by ``threads``
    model threads and ``busy`` cores of other work (None: unknown, none), between 0 and MAX_AUTO."""
    if requested >= 0:
        return requested
    free = cores - threads - (busy_cores(busy) if busy is not None else 0)
    return max(0, min(MAX_AUTO, free))


def workers_for(requested: int) -> int:
    """:func:`choose_workers` on this machine, with this process's thread choice (ralbook.runtime)."""
    if requested >= 0:
        return requested
    choice = configure_threads(announce=None)
    return choose_workers(requested, choice.cores, torch.get_num_threads(), choice.busy)
