"""Lines about this machine (threads chosen, precision measured, where a run was reused): where they go.

Why: a notebook a teacher shows must not carry ``threads: 2 (2 cores, ...)`` or a path of the machine that
ran it. On a console (and in a notebook a person runs) :func:`machine_note` prints the line; in a notebook
executed headlessly by :func:`ralbook.workbook.pipeline.run_notebook`, which sets :data:`ENV_MACHINE_LOG`
to a file beside the executed copy, the line is appended to that file instead, where it stays findable
but out of the saved outputs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_MACHINE_LOG = "RALBOOK_MACHINE_LOG"


def machine_log_path() -> Path | None:
    """The file machine lines go to in this process, or None (they are printed)."""
    value = os.environ.get(ENV_MACHINE_LOG, "").strip()
    return Path(value) if value else None


def machine_note(line: str) -> None:
    """Print a machine-specific line, or append it to the machine log when one is set (headless notebooks)."""
    path = machine_log_path()
    if path is None:
        print(line, flush=True)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(line.rstrip("\n") + "\n")
    except OSError as err:  # the line is not worth failing a notebook for; say so where no output keeps it
        print(f"ralbook: could not write the machine log {path}: {err}; line: {line}", file=sys.__stderr__)
