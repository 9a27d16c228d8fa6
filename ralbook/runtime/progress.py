"""Progress of a long loop: a bar on a terminal or in Jupyter, one line per finished stage elsewhere.

Why: written to a log file, a carriage-return bar becomes a garbled line per refresh. Training prints one
line per epoch there; the other commands use :func:`steps`, and :func:`quiet_hub_bars` turns off the model
hub's own bars ("Loading weights") in the same case.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


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



def steps(items: Iterable[T], desc: str, progress: bool = True, unit: str = "it", total: Optional[int] = None,
          leave: bool = True, stream: Optional[object] = None) -> Iterator[T]:
    """Iterate ``items``; with ``progress``: a tqdm bar where bars render, else one line when the loop ends
    (``desc: N unit in S s``, on stderr like the bars). Without ``progress``: nothing is shown."""
    stream = sys.stderr if stream is None else stream
    if progress and use_bars(stream):
        yield from tqdm(items, desc=desc, unit=unit, total=total, leave=leave)
        return
    start, n = time.perf_counter(), 0
    for item in items:
        n += 1
        yield item
    if progress:
        print(f"{desc}: {n} {unit} in {time.perf_counter() - start:.1f} s", file=stream, flush=True)


def quiet_hub_bars() -> None:
    """No download / "Loading weights" bars from huggingface_hub and transformers where bars do not render."""
    if use_bars():
        return
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
