"""Caption-file checks that warn rather than refuse (``inspect``).

Why: a line ``VIDEO#enc#0`` with an id and no text parses, and training never reads caption text (it
reads the token features), but notebooks show the text and ``extract``/``search`` need it: such lines are
reported by ``inspect`` as warnings naming the file, the line and the id, so a release whose text was lost
is noticed before a notebook shows empty queries.
"""
from __future__ import annotations

from pathlib import Path

SHOWN = 5  # lines named in one warning; the count covers the rest


def lines_without_text(path: Path) -> list[tuple[int, str]]:
    """(line number, caption id) of every line that holds an id and no caption text."""
    out = []
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
        for number, line in enumerate(fh, 1):
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 1:
                out.append((number, parts[0]))
    return out


def empty_caption_warning(path: Path, n_captions: int) -> str:
    """One warning for a caption file's lines without text ('' when there are none)."""
    empty = lines_without_text(path)
    if not empty:
        return ""
    shown = "; ".join(f"line {n}: {cap[:80]}" for n, cap in empty[:SHOWN])
    more = f"; and {len(empty) - SHOWN} more" if len(empty) > SHOWN else ""
    return (f"{path}: {len(empty)} of {n_captions} caption lines hold an id and no text ({shown}{more}); "
            f"expected 'CAPID caption text' (notebooks show the text, extract and search need it)")
