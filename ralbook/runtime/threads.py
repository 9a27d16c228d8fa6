"""CPU threads: how many torch uses, chosen from what the machine is doing.

Why: torch starts one OpenMP thread per core, and idle OpenMP threads spin. Beside one other busy
process on a two-core machine, such a run slows down 2 to 4 times (README, "Threads"): every parallel
region waits for the thread that shares its core with the other process. So ralbook

* uses as many threads as there are cores not busy with other work (:func:`choose_threads`,
  measured over a fifth of a second by :func:`configure_threads`, at least one);
* looks again every few seconds while training (:meth:`ThreadGovernor.recheck`, from cumulative
  CPU counters, so a look costs nothing), counting only the CPU time of *other* processes: it gives a
  core away soon after other work starts and takes it back when that work ends.

The user decides when they want to: ``--threads N`` on the command line (which sets
``RALBOOK_THREADS`` so notebook kernels follow it), a ``threads`` notebook parameter, the
``RALBOOK_THREADS`` environment variable, or ``OMP_NUM_THREADS``; in that order. ``0`` or
``auto`` means: choose from the load. The choice is printed once, as one line (through
:func:`ralbook.runtime.machine_log.machine_note`: into a log file, not the outputs, in headless notebooks).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

from ralbook.errors import RalbookError
from ralbook.runtime.machine_log import machine_note


ENV_THREADS = "RALBOOK_THREADS"
RECHECK_S = 5.0  # seconds between looks at the machine while training
SAMPLE_S = 0.2  # how long the first look at the machine lasts
Announce = Optional[Callable[[str], None]]
Requested = Union[int, str, None]


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why it was chosen (``source``: who decided; ``busy``: cores used by other work)."""

    threads: int
    source: str          # "auto", "--threads", "threads parameter", RALBOOK_THREADS or OMP_NUM_THREADS
    cores: int           # cores torch may use here
    busy: Optional[float] = None  # other processes' load in cores (auto only; None: unknown)

    def line(self) -> str:
        """One line for the console, e.g. ``threads: 2 (2 cores, machine idle)``."""
        if self.source != "auto":
            return f"threads: {self.threads} (set by {self.source}; {self.cores} cores)"
        if self.busy is None:
            state = "load unknown"
        elif busy_cores(self.busy) == 0:
            state = "machine idle"
        else:
            state = f"{self.busy:.1f} of them busy with other work"
        return f"threads: {self.threads} ({self.cores} cores, {state}; --threads N overrides)"


# ----------------------------------------------------------------------------- the decision (pure)


def busy_cores(busy: float) -> int:
    """Cores taken by other work: their load rounded half up (0.6 cores of a busy loop counts as one)."""
    return max(0, math.floor(busy + 0.5))


def parse_threads(value: Requested, source: str) -> Optional[int]:
    """A thread count from a flag, parameter or variable; None for 'choose' (None, '', 0, 'auto')."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "0", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise RalbookError(f"{source}: expected a thread count >= 1, 0 or 'auto', got {str(value)[:80]!r}")
    return n


def choose_threads(requested: Requested, env: Mapping[str, str], cores: int,
                   busy: Optional[float], source: str = "--threads") -> ThreadChoice:
    """The thread count: ``requested`` first, then RALBOOK_THREADS, then OMP_NUM_THREADS, then the load.

    ``cores``: cores torch may use; ``busy``: other processes' load in cores (None: unknown, use all).
    """
    cores = max(1, int(cores))
    for value, name in ((requested, source), (env.get(ENV_THREADS), ENV_THREADS),
                        (env.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")):
        n = parse_threads(value, name)
        if n is not None:
            return ThreadChoice(n, name, cores)
    free = cores if busy is None else cores - busy_cores(busy)
    return ThreadChoice(min(cores, max(1, free)), "auto", cores, busy)


# ----------------------------------------------------------------------------- measuring the machine


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU seconds of the usable cores (all processes), this process's CPU seconds, wall time."""

    busy_s: float
    own_s: float
    wall_s: float


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def read_cpu_sample(cpus: list[int], stat_path: str = "/proc/stat") -> Optional[CpuSample]:
    """A :class:`CpuSample` from ``/proc/stat`` (Linux); None where it cannot be read."""
    wanted = {f"cpu{i}" for i in cpus}
    try:
        with open(stat_path, encoding="ascii") as f:
            lines = f.read().splitlines()
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            # user nice system idle iowait irq softirq steal: busy = everything but idle and iowait
            values = [int(v) for v in fields[1:9]]
            busy += sum(values) - values[3] - values[4]
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system + descendants_cpu_s(tick)
    return CpuSample(busy / tick, own, time.monotonic())


def descendants_cpu_s(tick: float, pid: Optional[int] = None) -> float:
    """CPU seconds of the running child processes (DataLoader workers), so they count as this run's work."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0.0
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # state ppid ... utime(11) stime(12)
            children.setdefault(int(fields[1]), []).append(int(entry))
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0.0, list(children.get(pid or os.getpid(), []))
    while stack:
        child = stack.pop()
        total += cpu.get(child, 0.0)
        stack.extend(children.get(child, []))
    return total


def other_load(before: CpuSample, after: CpuSample) -> float:
    """Cores kept busy by other processes between two samples (this process's own CPU time excluded)."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    return max(0.0, ((after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / wall)


def load_average() -> Optional[float]:
    """The one-minute load average where /proc/stat is missing (macOS); None where neither exists."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------- applying it


def physical_cores(cpus: list[int], sys_root: str = "/sys") -> int:
    """Cores behind ``cpus`` (hyper-threads of one core count once), capped by a container's CPU quota.

    torch's default is one thread per physical core; a second thread on a hyper-thread sibling, or more
    threads than a cgroup quota (``docker --cpus``) grants, only slows a run down.
    """
    siblings = set()
    for cpu in cpus:
        try:
            with open(f"{sys_root}/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list", encoding="ascii") as f:
                siblings.add(f.read().strip())
        except OSError:
            siblings.add(str(cpu))
    cores = len(siblings)
    try:
        with open(f"{sys_root}/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class ThreadGovernor:
    """Applies a :class:`ThreadChoice` and, when it was automatic, revises it from the load since the last look."""

    def __init__(self, choice: ThreadChoice, sample: Optional[CpuSample], cpus: list[int],
                 sampler: Callable[[list[int]], Optional[CpuSample]] = read_cpu_sample,
                 set_threads: Optional[Callable[[int], None]] = None):
        self.choice, self.last, self.cpus, self.sampler = choice, sample, cpus, sampler
        self.set_threads = set_threads or _torch_set_threads
        self.set_threads(choice.threads)

    def recheck(self, announce: Announce = None) -> ThreadChoice:
        """Count the other processes' load since the last look and adjust an automatic choice."""
        if self.choice.source != "auto" or self.last is None:
            return self.choice
        now = self.sampler(self.cpus)
        if now is None:
            return self.choice
        busy, self.last = other_load(self.last, now), now
        new = choose_threads(None, {}, self.choice.cores, busy)
        if new.threads != self.choice.threads:
            self.set_threads(new.threads)
            if announce:
                announce(f"{new.line()} (was {self.choice.threads})")
        self.choice = new
        return self.choice


def _torch_set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_GOVERNOR: Optional[ThreadGovernor] = None


def configure_threads(threads: Requested = None, announce: Announce = machine_note, source: str = "threads parameter",
                      sample_s: float = SAMPLE_S) -> ThreadChoice:
    """Choose and apply torch's thread count for this process; print the choice once (see the module text).

    ``threads``: an explicit count (``None``/0/'auto': RALBOOK_THREADS, OMP_NUM_THREADS, else the load).
    A later call without ``threads`` keeps the first choice, so library code can call this freely.
    """
    global _GOVERNOR
    explicit = parse_threads(threads, source)
    if _GOVERNOR is not None and (explicit is None or (explicit == _GOVERNOR.choice.threads
                                                       and _GOVERNOR.choice.source != "auto")):
        if explicit is not None:  # asked again for the same count: other code may have changed torch's since
            _torch_set_threads(explicit)
        return _GOVERNOR.choice
    cpus = usable_cpus()
    cores = physical_cores(cpus)
    sample, busy = None, None
    if explicit is None and parse_threads(os.environ.get(ENV_THREADS), ENV_THREADS) is None \
            and not os.environ.get("OMP_NUM_THREADS"):
        first = read_cpu_sample(cpus)
        if first is not None:
            time.sleep(sample_s)
            sample = read_cpu_sample(cpus)
            busy = other_load(first, sample) if sample is not None else None
        else:
            busy = load_average()
    choice = choose_threads(explicit, os.environ, cores, busy, source)
    _GOVERNOR = ThreadGovernor(choice, sample, cpus)
    if announce:
        announce(choice.line())
    return choice


def recheck_threads(announce: Announce = machine_note) -> Optional[ThreadChoice]:
    """Revise an automatic thread count from the load since the last look (None: not configured)."""
    global _LAST_LOOK
    _LAST_LOOK = time.monotonic()
    return _GOVERNOR.recheck(announce) if _GOVERNOR is not None else None


_LAST_LOOK = 0.0


def recheck_threads_now_and_then(announce: Announce = None, every_s: float = RECHECK_S) -> Optional[ThreadChoice]:
    """During training: :func:`recheck_threads` at most every ``every_s`` seconds, so a process that starts
    in the middle of a long epoch costs seconds of oversubscription, not the rest of the epoch."""
    if _GOVERNOR is None or time.monotonic() - _LAST_LOOK < every_s:
        return None
    return recheck_threads(announce)


def reset() -> None:
    """Forget the choice (tests)."""
    global _GOVERNOR
    _GOVERNOR = None
