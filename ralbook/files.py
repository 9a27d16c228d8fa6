"""Writing files so that a crash never leaves half of one, paths relative to the repository, JSON-ready values."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional, Union

import torch

PathLike = Union[str, os.PathLike]


def replace_atomically(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename it over ``path``.

    A kill leaves the old file or the new one, never half of one; the temporary file is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_atomic(path: PathLike, data: Union[bytes, str]) -> Path:
    """Bytes, or text as UTF-8, to ``path`` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return replace_atomically(path, lambda f: f.write(raw))


def write_json(path: PathLike, obj: Any, **dumps: Any) -> Path:
    """``json.dumps(obj, **dumps)`` plus a newline to ``path`` atomically."""
    return write_atomic(path, json.dumps(obj, **dumps) + "\n")


def save_atomic(obj: Any, path: PathLike) -> Path:
    """torch.save to ``path`` atomically (checkpoints, index model files)."""
    return replace_atomically(path, lambda f: torch.save(obj, f))


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
