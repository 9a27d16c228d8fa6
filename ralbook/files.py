"""Writing files so that a crash never leaves half of one, paths relative to the repository, JSON-ready values."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _looks_like_repo(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "ralbook").is_dir()


def repo_root(start: Optional[str | os.PathLike] = None) -> Path:
    """The ralbook checkout: the nearest folder at or above ``start`` (default: the working
    directory) holding ``pyproject.toml`` and ``ralbook/``; failing that, the folder above the
    installed package when it is a checkout (editable install); failing that, the working directory.
    """
    here = Path(start if start is not None else os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if _looks_like_repo(candidate):
            return candidate
    package_parent = Path(__file__).resolve().parent.parent
    if _looks_like_repo(package_parent):
        return package_parent
    return here


def resolve_path(path: str | os.PathLike, root: Optional[Path] = None) -> Path:
    """Absolute paths unchanged (``~`` expanded); relative ones taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or repo_root()) / p


def json_ready(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays to plain JSON values; NaN and infinities become null."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "tolist"):
        return json_ready(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
