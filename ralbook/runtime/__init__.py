"""Layer 2, the runtime: devices, precision, CPU threads, process groups and progress bars.

``from ralbook import runtime`` keeps the public names of the former flat ``ralbook/runtime.py``
(now :mod:`ralbook.runtime.threads`) for one release; new code imports from the modules.
"""
from ralbook.runtime.progress import use_bars
from ralbook.runtime.threads import (ENV_THREADS, CpuSample, ThreadChoice, ThreadGovernor, choose_threads,
                                     configure_threads, parse_threads, recheck_threads, reset)

__all__ = ["use_bars", "ENV_THREADS", "CpuSample", "ThreadChoice", "ThreadGovernor", "choose_threads",
           "configure_threads", "parse_threads", "recheck_threads", "reset"]
