"""Whether to draw progress bars."""
from __future__ import annotations

import sys
from typing import Optional


def use_bars(stream: Optional[object] = None) -> bool:
    """Progress bars only where they render: a terminal or a Jupyter kernel (widgets).

    Elsewhere (output sent to a log file or a pipe) bars turn into garbled carriage returns, so
    callers print one line per epoch instead.
    """
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():  # type: ignore[attr-defined]
            return True
    except (AttributeError, ValueError):
        pass
    return "ipykernel" in sys.modules
