"""What made a result: code version, machine, command line, inputs (with their hashes), start and end time.

Why: the same seed gives another number with another thread count, another commit or another label file,
and a JSON result that does not say which cannot be compared or reproduced. Every file a command writes
(a run's ``config.json``, ``sigma-report --json``, ``evaluate --json``, an index manifest) records where
it came from through the two functions here, so that the records agree in their keys:

* :func:`run_record` - a training run: the machine record of :mod:`ralbook.runtime.environment`
  (CPU, threads actually used, precision, versions) extended with the git commit, the command line, the
  ``--set`` overrides and the start time; :func:`finish_record` adds the end time.
* :func:`result_provenance` - a result file: the checkpoint (path and sha256 of its bytes), split, label or
  relevance file (path and sha256), bootstrap size and seed, plus the same software/machine record.

Nothing here needs git: outside a checkout (a wheel install) or without a ``git`` program, the commit is
recorded as None.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ralbook.runtime.environment import environment_record

PathLike = Union[str, os.PathLike]
PROVENANCE_KEY = "provenance"
GIT_TIMEOUT_S = 5.0
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the checkout that holds ralbook/, if it is one


def _git(folder: Path, *args: str) -> Optional[str]:
    """stdout of ``git -C folder ARGS``, or None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_state(folder: Optional[str] = None) -> dict[str, Any]:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the ralbook checkout (default: the one
    holding this package). Only a checkout of ralbook itself counts: a wheel installed inside some other
    repository records None rather than that repository's commit."""
    where = Path(folder) if folder else _PACKAGE_PARENT
    none = {"git_commit": None, "git_dirty": None}
    if not ((where / "pyproject.toml").is_file() and (where / "ralbook").is_dir()):
        return none
    top = _git(where, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != where.resolve():
        return none
    commit = _git(where, "rev-parse", "HEAD")
    if commit is None:
        return none
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def now() -> str:
    """The local time with its UTC offset, to the second (ISO 8601): comparable across machines."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as a user would retype it: ``python -m ralbook ARGS`` for the command line's arguments
    ``argv``; without them, this process's own ``sys.argv`` (a notebook kernel, a script)."""
    if argv is not None:
        return "python -m ralbook " + shlex.join([str(a) for a in argv])
    if sys.argv and Path(sys.argv[0]).name == "ipykernel_launcher.py":  # its argv names a temporary file only
        return "a Jupyter kernel (the notebook's parameters describe the run)"
    return shlex.join([Path(sys.executable).name, *sys.argv])


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks: checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Optional[PathLike]) -> Optional[dict[str, Any]]:
    """``{"path": absolute path, "sha256": ...}`` of an input file (sha256 None when it cannot be read);
    None when there is no file."""
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    try:
        sha = file_sha256(p)
    except OSError:
        sha = None
    return {"path": str(p.resolve()), "sha256": sha}


def run_record(precision: str, device: str = "cpu", num_workers: Optional[int] = None,
               amp_probe: Optional[Mapping[str, Any]] = None, *, command: Optional[str] = None,
               overrides: Sequence[str] = (), started: Optional[str] = None) -> dict[str, Any]:
    """A training run's record (config.json's ``environment``): the machine record extended with the git
    state, the command line (default: this process's), the ``--set`` overrides and the start time."""
    record = environment_record(precision, device, num_workers, amp_probe)
    record.update(git_state())
    record.update({"command": command if command is not None else command_line(), "overrides": list(overrides),
                   "started": started or now()})
    return record


def finish_record(record: Mapping[str, Any], finished: Optional[str] = None) -> dict[str, Any]:
    """``record`` with the end time (``finished``) of the run."""
    return {**record, "finished": finished or now()}


def result_provenance(*, checkpoint: Optional[PathLike] = None, split: Optional[str] = None,
                      labels: Union[PathLike, Sequence[PathLike], None] = None, relevant: Optional[PathLike] = None,
                      n_boot: Optional[int] = None, seed: Optional[int] = None, precision: str = "none",
                      device: str = "cpu", argv: Optional[Sequence[str]] = None,
                      extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """What a result file records about its making: the checkpoint (path, sha256 of its bytes), split,
    label / relevance file (path, sha256; None when not used), bootstrap size and seed (None when the result
    has no bootstrap), the command line, the time, and the software / machine record of :func:`run_record`.
    ``labels`` may also be a list of files (a command that merges several): then a list of records.
    ``extra`` adds command-specific entries (e.g. an index's dtype)."""
    label_record: Any = ([file_record(p) for p in labels]
                         if labels is not None and not isinstance(labels, (str, os.PathLike)) else file_record(labels))
    out: dict[str, Any] = {
        "checkpoint": file_record(checkpoint), "split": split, "labels": label_record,
        "relevant": file_record(relevant), "n_boot": n_boot, "seed": seed,
        "command": command_line(argv), "created": now()}
    software = environment_record(precision, device)
    software.update(git_state())
    out["environment"] = software
    if extra:
        out.update(extra)
    return out


__all__ = ["PROVENANCE_KEY", "git_state", "now", "command_line", "file_sha256", "file_record", "run_record",
           "finish_record", "result_provenance"]
