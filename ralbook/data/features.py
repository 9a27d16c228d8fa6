"""Low-level pieces of the data layer: the per-sample preprocessing of docs/method.md#inputs and the
readers of the feature-release files (see ``data/README.md`` for the layout).

Feature releases are larger than memory on small machines, so frame rows are read through one
``np.memmap`` per process and only the rows of the video asked for are copied. HDF5 handles and
memory maps are reopened after a fork (DataLoader workers) and dropped when pickled (spawn), so a
worker never shares a file handle with its parent.
"""
from __future__ import annotations

import ast
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import h5py
import numpy as np

from ralbook.errors import DataError, shorten


PathLike = Union[str, "os.PathLike[str]"]
NORM_EPS = 1e-5          # added to the row norm before dividing (docs/method.md#inputs)
ID_ENCODING = "ISO-8859-1"


# ----------------------------------------------------------------------------- preprocessing

def l2_normalize(x: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """Rows divided by (their L2 norm + eps), in float32 like the public code.

    A finite row whose float32 norm overflows (values near float32's maximum) is normalised in
    float64 instead, so extreme but finite inputs never turn into zeros or NaN.
    """
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out = x / (norm + np.float32(eps))
    overflow = np.isinf(norm[..., 0]) & np.isfinite(x).all(axis=-1)
    if overflow.any():
        wide = x[overflow].astype(np.float64)
        out[overflow] = (wide / (np.linalg.norm(wide, axis=-1, keepdims=True) + eps)).astype(np.float32)
    return out


def bin_edges(n: int, k: int) -> np.ndarray:
    """b_i = min(round(i * n / k), n - 1) for i = 0..k, rounding half to even.

    ``i * n`` is an exact integer, so the quotient is exactly x.5 only when the true value is;
    for k a power of two (32, 128) this equals the public code's float arithmetic bit for bit.
    """
    return np.minimum(np.round(np.arange(k + 1) * n / k), n - 1).astype(np.int64)


def bin_rows(x: np.ndarray, k: int) -> np.ndarray:
    """Average n rows into k bins (docs/method.md#inputs): bin i is the mean of rows b_i..b_{i+1}-1, or row b_i when empty.

    Bins hold only two or three distinct row counts, so each count is one gather of a
    (bins, count, D) block and one sum: no Python loop over bins (numpy's cumsum and reduceat
    along axis 0 are an order of magnitude slower for wide rows).
    """
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < 1 or k < 1:
        raise ValueError(f"bin_rows needs at least one row and one bin, got {n} rows and k={k}")
    edges = bin_edges(n, k)
    start, counts = edges[:-1], np.diff(edges)
    out = np.empty((k,) + x.shape[1:], dtype=np.float32)
    for count in np.unique(counts):
        bins = np.flatnonzero(counts == count)
        if count == 0:
            out[bins] = x[start[bins]]
        else:
            block = x[start[bins][:, None] + np.arange(count)]
            with np.errstate(over="ignore"):
                mean = block.sum(axis=1) / np.float32(count)
            overflow = ~np.isfinite(mean).all(axis=-1) & np.isfinite(block).all(axis=(1, 2))
            if overflow.any():  # finite rows near float32's maximum: their sum overflows, their mean does not
                mean[overflow] = block[overflow].astype(np.float64).mean(axis=1).astype(np.float32)
            out[bins] = mean
    return out


def video_inputs(raw: np.ndarray, n_clips: int = 32, max_frames: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(clip rows (n_clips, Dv), frame rows (min(n, max_frames), Dv)), both L2-normalised.

    Clips are always binned to exactly ``n_clips`` rows (short videos repeat rows); frames are
    binned only when the video is longer than ``max_frames``.
    """
    raw = np.asarray(raw, dtype=np.float32)
    clip = l2_normalize(bin_rows(raw, n_clips))
    frames = bin_rows(raw, max_frames) if raw.shape[0] > max_frames else raw
    return clip, l2_normalize(frames)


def query_input(raw: np.ndarray, max_len: int = 30) -> np.ndarray:
    """Token rows L2-normalised, the first ``max_len`` kept (normalising is per row, so the order is free)."""
    return l2_normalize(np.asarray(raw, dtype=np.float32)[:max_len])


# ----------------------------------------------------------------------------- small file readers

def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a DataError that says what the file should hold."""
    if not path.is_file():
        where = path.parent
        hint = "" if where.is_dir() else f" (folder {where} does not exist either)"
        raise DataError(f"{path}: missing file; expected {what}{hint}")
    return path


def read_shape(path: Path) -> tuple[int, int]:
    """``shape.txt``: "NUM_ROWS DIM"."""
    text = require_file(path, '"NUM_ROWS DIM"').read_text(encoding=ID_ENCODING).split()
    try:
        rows, dim = (int(v) for v in text)
    except ValueError:
        raise DataError(f"{path}: expected two integers \"NUM_ROWS DIM\", found {shorten(' '.join(text))}") from None
    if rows < 0 or dim < 1:
        raise DataError(f"{path}: expected NUM_ROWS >= 0 and DIM >= 1, found {rows} {dim}")
    return rows, dim


def read_ids(path: Path) -> list[str]:
    """``id.txt``: whitespace separated row ids, ISO-8859-1 text."""
    return require_file(path, "the row (frame) ids, whitespace separated").read_text(encoding=ID_ENCODING).split()


class _DuplicateKey(Exception):
    """Raised inside the JSON parser when a dict key repeats (located afterwards with ``ast``)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[Any, Any]]) -> dict:
    """``object_pairs_hook`` for json: a dict, or _DuplicateKey when a key repeats (the last would win)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return out


def _fast_literal(text: str) -> Any:
    """The literal parsed by the JSON parser when that is provably equivalent, else None.

    With no backslash and only one kind of quote, every string is delimited by that quote and
    contains neither quote, so swapping it for '"' gives JSON with the same strings (anything
    else JSON rejects falls back to ``ast.literal_eval``). About 50x faster than ``ast`` on the
    tens-of-MB files of the real releases. A repeated key raises _DuplicateKey.
    """
    if "\\" in text or ("'" in text and '"' in text):
        return None
    try:
        return json.loads(text.replace("'", '"'), object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError:
        return None


def _where(node: ast.AST, lines: list[str]) -> str:
    """'line L, character C' of an AST node (col_offset counts UTF-8 bytes of the line)."""
    line = lines[node.lineno - 1] if 0 < node.lineno <= len(lines) else ""
    column = len(line.encode("utf-8")[: node.col_offset].decode("utf-8", errors="ignore")) + 1
    return f"line {node.lineno}, character {column}"


def _ast_dict(path: Path, text: str) -> Any:
    """The literal of ``text`` through ``ast`` (parsed, never executed); a repeated top-level key is refused."""
    tree = ast.parse(text.strip(), mode="eval")
    body = tree.body
    if isinstance(body, ast.Dict):
        first: dict[Any, ast.AST] = {}
        lines = text.strip().splitlines()
        for key in body.keys:
            if key is None:       # {**other}: literal_eval refuses it below
                continue
            value = ast.literal_eval(key)
            try:
                seen = first.setdefault(value, key)
            except TypeError:     # an unhashable key: literal_eval refuses it below
                continue
            if seen is not key:
                raise DataError(f"{path}: video {shorten(value)} is listed twice, at {_where(seen, lines)} and "
                                f"{_where(key, lines)} (expected each video once; the last would silently win)")
    return ast.literal_eval(body)


def read_video2frames(path: Path) -> dict[str, list[str]]:
    """``video2frames.txt`` parsed as a Python literal (never executed), checked to be {str: [str, ...]}
    with every video once."""
    text = require_file(path, "a Python dict literal {video id: [frame id, ...]}").read_text(encoding=ID_ENCODING)
    try:
        try:
            value = _fast_literal(text)
        except _DuplicateKey:
            value = None          # located (and refused) by the ast pass
        if value is None:
            value = _ast_dict(path, text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: expected a plain dict literal {{video id: [frame id, ...]}}, found something "
                        f"else ({type(err).__name__}: {shorten(str(err))}); the file is never executed as "
                        f"code") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a dict literal {{video id: [frame id, ...]}}, "
                        f"found a {type(value).__name__}")
    for video, frames in value.items():
        if not isinstance(video, str) or not isinstance(frames, (list, tuple)) \
                or not all(isinstance(f, str) for f in frames):
            raise DataError(f"{path}: video {shorten(video)}: expected a string key and a list of frame-id "
                            f"strings, found {type(video).__name__} -> {type(frames).__name__}")
    return {video: list(frames) for video, frames in value.items()}


def check_finite(rows: np.ndarray, path: Path, what: str, row_label: Optional[Callable[[int], str]] = None) -> None:
    """DataError naming the first non-finite row, if any (cheap enough to run on every read)."""
    if rows.size and not np.isfinite(rows).all():
        bad = int(np.flatnonzero(~np.isfinite(rows.reshape(rows.shape[0], -1)).all(axis=1))[0])
        label = row_label(bad) if row_label else f"row {bad}"
        raise DataError(f"{path}: {what} ({label}): expected finite values, found NaN or inf")


FAR_FACTOR, FAR_MADS = 10.0, 20.0   # the rule of far_rows


def far_rows(norms: np.ndarray) -> np.ndarray:
    """Mask of row norms far above the rest: above FAR_FACTOR x the median AND the median + FAR_MADS robust
    standard deviations (1.4826 x the median absolute deviation).

    Why both: the MAD part adapts to how spread the collection's norms are, the factor keeps a very
    tight collection (MAD near 0) from flagging ordinary rows. Median and MAD ignore the outliers
    themselves, so a few rows at float32's maximum cannot hide each other. Only the high side is
    flagged: large rows dominate clip averages, small ones merely vanish after normalisation.
    """
    norms = np.asarray(norms, dtype=np.float64)
    if not norms.size:
        return np.zeros(0, dtype=bool)
    median = float(np.median(norms))
    spread = 1.4826 * float(np.median(np.abs(norms - median)))
    return (norms > FAR_FACTOR * median) & (norms > median + FAR_MADS * spread)


def row_norms(rows: np.ndarray) -> np.ndarray:
    """L2 norms of (n, D) rows computed in float64 (float32 overflows for values near its maximum)."""
    return np.linalg.norm(np.asarray(rows, dtype=np.float64).reshape(len(rows), -1), axis=1)


def far_rows_warning(norms: np.ndarray, label: Callable[[int], str], path: Path, what: str,
                     examples: int = 3) -> Optional[str]:
    """The warning ``inspect`` prints for rows whose norm is far above the collection's (None when none is)."""
    far = np.flatnonzero(far_rows(norms))
    if not len(far):
        return None
    worst = far[np.argsort(-norms[far], kind="stable")][:examples]
    shown = ", ".join(f"{label(int(i))} (norm {norms[i]:.3g})" for i in worst)
    return (f"{path}: {len(far)} of {len(norms)} {what} rows have a norm far above the others (median "
            f"{np.median(norms):.3g}; rule: above {FAR_FACTOR:g}x the median and the median + {FAR_MADS:g} robust "
            f"standard deviations), e.g. {shown}; such rows dominate averages: check how the file was made")


def far_rows_by_id(norms: list[np.ndarray], ids: list[str], path: Path, row_kind: str, id_kind: str) -> Optional[str]:
    """far_rows_warning over the rows of several ids (``norms[k]`` holds the row norms of ``ids[k]``)."""
    owner = np.repeat(np.arange(len(ids)), [len(n) for n in norms])
    start = np.concatenate([[0], np.cumsum([len(n) for n in norms])]).astype(np.int64)

    def label(i: int) -> str:
        return f"{row_kind} {i - int(start[owner[i]])} of {id_kind} {shorten(ids[owner[i]])}"
    return far_rows_warning(np.concatenate(norms) if norms else np.zeros(0), label, path, row_kind)


# ----------------------------------------------------------------------------- per-process handles

class ProcessLocal:
    """Opens a resource lazily, once per process; reopens after a fork, and is dropped when pickled."""

    def __init__(self, opener: Callable[[], Any]):
        self._opener = opener
        self._value: Any = None
        self._pid: Optional[int] = None

    def get(self) -> Any:
        if self._value is None or self._pid != os.getpid():
            self._value, self._pid = self._opener(), os.getpid()
        return self._value

    def close(self) -> None:
        if self._value is not None and self._pid == os.getpid() and hasattr(self._value, "close"):
            self._value.close()
        self._value = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_opener": self._opener, "_value": None, "_pid": None}


# h5py turns damage inside a file (a broken heap or B-tree, a bad filter, a truncated chunk) into these
H5_FAILURES = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, SystemError)


def open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except H5_FAILURES as err:
        raise DataError(f"{path}: not a readable HDF5 file ({shorten(str(err))})") from None


class _H5Opener:
    """Picklable opener (a lambda would not survive spawn-based DataLoader workers)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> h5py.File:
        return open_h5(self.path)


WIDTH_SAMPLE = 25    # datasets whose widths decide the expected width (the most common one wins)


@contextmanager
def h5_errors(path: Path, what: str) -> Iterator[None]:
    """Failures inside h5py (damaged file) become one DataError naming the file and what was being read."""
    try:
        yield
    except DataError:
        raise
    except H5_FAILURES as err:
        raise DataError(f"{path}: {what}: the HDF5 file is damaged or not written as expected "
                        f"({type(err).__name__}: {shorten(str(err))}); re-copy or re-extract it") from None


def sample_width(path: Path, sample: int = WIDTH_SAMPLE) -> int:
    """Expected row width of an HDF5 file: the most common width among its first ``sample`` 2-D datasets.

    Why the majority: a single dataset of the wrong width then gets the blame, wherever it sits.
    (Scanning every dataset would cost seconds on the 100k-caption releases.)
    """
    widths: dict[int, int] = {}
    with open_h5(path) as f, h5_errors(path, "listing its datasets"):
        for name in f:
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.shape[1] > 0:
                widths[int(obj.shape[1])] = widths.get(int(obj.shape[1]), 0) + 1
                if sum(widths.values()) >= sample:
                    break
    if not widths:
        raise DataError(f"{path}: expected 2-D float datasets (rows, dim), found none")
    return max(widths, key=lambda w: (widths[w], -w))


class H5Rows:
    """Datasets of one HDF5 file, one per id, each (rows, dim) of numbers with dim fixed across the file."""

    def __init__(self, path: Path, kind: str, id_kind: str):
        self.path = require_file(path, f"{kind} (one dataset per {id_kind})")
        self.kind, self.id_kind = kind, id_kind
        self.dim = sample_width(self.path)
        self._file = ProcessLocal(_H5Opener(self.path))

    def _label(self, key: str) -> str:
        return f"{self.id_kind} {shorten(key)}"

    def dataset(self, key: str) -> h5py.Dataset:
        with h5_errors(self.path, self._label(key)):
            return self._checked(key, self._file.get().get(key) if key else None)

    def _checked(self, key: str, obj: Any) -> h5py.Dataset:
        if not isinstance(obj, h5py.Dataset):
            raise DataError(f"{self.path}: {self._label(key)} has no dataset (expected one of shape "
                            f"(rows, {self.dim}))")
        if obj.ndim != 2 or obj.shape[1] != self.dim:
            raise DataError(f"{self.path}: {self._label(key)}: expected shape (rows, {self.dim}) (the width of most "
                            f"datasets in the file), found {tuple(obj.shape)}")
        if obj.dtype.kind not in "fiu":
            raise DataError(f"{self.path}: {self._label(key)}: expected numbers (float32), found data of type "
                            f"{shorten(str(obj.dtype))}")
        if obj.shape[0] == 0:
            raise DataError(f"{self.path}: {self._label(key)}: expected at least one row, found 0")
        return obj

    def n_rows(self, key: str) -> int:
        return int(self.dataset(key).shape[0])

    def read(self, key: str) -> np.ndarray:
        obj = self.dataset(key)
        with h5_errors(self.path, f"reading {self._label(key)}"):
            rows = np.asarray(obj[...], dtype=np.float32)
        check_finite(rows, self.path, self._label(key))
        return rows

    def has(self, key: str) -> bool:
        with h5_errors(self.path, self._label(key)):
            return bool(key) and isinstance(self._file.get().get(key), h5py.Dataset)

    def keys(self) -> list[str]:
        with h5_errors(self.path, "listing its datasets"):
            return list(self._file.get().keys())

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- frame stores

class FrameIndex:
    """video id -> rows of feature.bin, built once for every video with vectorised bookkeeping.

    Videos whose rows are consecutive (the usual case) are read with one slice; a missing frame
    id is recorded and reported only when that video is read, so one broken video elsewhere does
    not stop the rest.
    """

    def __init__(self, ids: list[str], video2frames: dict[str, list[str]], id_path: Path, v2f_path: Path):
        row_of = {frame: row for row, frame in enumerate(ids)}
        if len(row_of) != len(ids):
            seen: set[str] = set()
            dup = next(f for f in ids if f in seen or seen.add(f))  # type: ignore[func-returns-value]
            raise DataError(f"{id_path}: frame id {shorten(dup)} is listed more than once "
                            f"(expected unique row ids)")
        self.video2frames, self.id_path, self.v2f_path = video2frames, id_path, v2f_path
        self.videos = list(video2frames)
        self.position = {video: i for i, video in enumerate(self.videos)}
        lengths = np.fromiter((len(f) for f in video2frames.values()), np.int64, count=len(video2frames))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.flat = np.fromiter((row_of.get(f, -1) for frames in video2frames.values() for f in frames),
                                np.int64, count=int(self.offsets[-1]))
        missing = np.concatenate([[0], np.cumsum(self.flat < 0)])
        steps = np.diff(self.flat) != 1   # jumps[j]: non-consecutive steps before position j (padded to len + 1)
        jumps = np.concatenate([[0], np.cumsum(steps), [steps.sum()]]) if len(self.flat) else np.zeros(1, np.int64)
        lo, hi = self.offsets[:-1], self.offsets[1:]
        self.n_missing = missing[hi] - missing[lo]
        self.contiguous = (lengths > 0) & (jumps[np.maximum(hi - 1, lo)] == jumps[lo])

    def n_frames(self, video: str) -> int:
        i = self._pos(video)
        return int(self.offsets[i + 1] - self.offsets[i])

    def rows(self, video: str) -> Union[slice, np.ndarray]:
        """Row selector of ``video``: a slice when its rows are consecutive, else an index array."""
        i = self._pos(video)
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        if hi == lo:
            raise DataError(f"{self.v2f_path}: video {shorten(video)} has zero frames "
                            f"(expected at least one frame id)")
        if self.n_missing[i]:
            j = int(np.flatnonzero(self.flat[lo:hi] < 0)[0])
            raise DataError(f"{self.id_path}: frame id {shorten(self.video2frames[video][j])} of video "
                            f"{shorten(video)} is not listed (expected every frame id of {self.v2f_path.name} in "
                            f"{self.id_path.name}; "
                            f"{int(self.n_missing[i])} of its {hi - lo} frames are missing)")
        if self.contiguous[i]:
            start = int(self.flat[lo])
            return slice(start, start + hi - lo)
        return self.flat[lo:hi]

    def describe_row(self, row: int) -> str:
        """'frame F of video V' for a row of feature.bin (for error messages; a linear search is fine there)."""
        hits = np.flatnonzero(self.flat == row)
        if not len(hits):
            return "a row no video uses"
        i = int(np.searchsorted(self.offsets, hits[0], side="right")) - 1
        video = self.videos[i]
        frame = self.video2frames[video][int(hits[0] - self.offsets[i])]
        return f"frame {shorten(frame)} of video {shorten(video)}"

    def _pos(self, video: str) -> int:
        try:
            return self.position[video]
        except KeyError:
            raise DataError(f"{self.v2f_path}: video {shorten(video)} is not listed (expected a key "
                            f"{shorten(video)} among its {len(self.position)} videos)") from None


class _MemmapOpener:
    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape = path, shape

    def __call__(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=self.shape)


class BinFrameStore:
    """``FeatureData/FEATURE/{feature.bin,id.txt,shape.txt,video2frames.txt}``, rows read on demand."""

    variant = "bin"

    def __init__(self, feature_dir: Path):
        self.dir = Path(feature_dir)
        self.bin_path = require_file(self.dir / "feature.bin", "float32 rows, no header, row-major")
        self.id_path = require_file(self.dir / "id.txt", "the row (frame) ids, whitespace separated")
        self.v2f_path = require_file(self.dir / "video2frames.txt", "a dict literal {video id: [frame id, ...]}")
        self.n_rows, self.dim = read_shape(self.dir / "shape.txt")
        expected, found = self.n_rows * self.dim * 4, self.bin_path.stat().st_size
        if expected != found:
            raise DataError(f"{self.bin_path}: shape.txt says {self.n_rows} x {self.dim} float32 = {expected} "
                            f"bytes, the file has {found} bytes")
        self._index: Optional[FrameIndex] = None
        self._memmap = ProcessLocal(_MemmapOpener(self.bin_path, (self.n_rows, self.dim)))

    @property
    def memmap(self) -> np.memmap:
        """This process's read-only memory map of feature.bin (nothing is read until rows are indexed)."""
        return self._memmap.get()

    @property
    def index(self) -> FrameIndex:
        if self._index is None:
            ids = read_ids(self.id_path)
            if len(ids) != self.n_rows:
                raise DataError(f"{self.id_path}: shape.txt says {self.n_rows} rows, id.txt lists {len(ids)} ids")
            self._index = FrameIndex(ids, read_video2frames(self.v2f_path), self.id_path, self.v2f_path)
        return self._index

    def video_ids(self) -> list[str]:
        return list(self.index.position)

    def has_video(self, video: str) -> bool:
        return video in self.index.position

    def n_frames(self, video: str) -> int:
        return self.index.n_frames(video)

    def read(self, video: str) -> np.ndarray:
        """The video's frame rows (n, Dv), copied out of the memory map and checked to be finite."""
        sel = self.index.rows(video)
        rows = np.array(self.memmap[sel], dtype=np.float32, copy=True, subok=False)
        if rows.size and not np.isfinite(rows).all():
            check_finite(rows, self.bin_path, f"video {shorten(video)}",
                         lambda j: f"frame {self.index.video2frames[video][j]!r}")
        return rows

    @property
    def listing_path(self) -> Path:
        """The file that says which videos exist."""
        return self.v2f_path

    def check_video(self, video: str) -> None:
        """Listed, with at least one frame, every frame id in id.txt (no feature rows read)."""
        self.index.rows(video)

    def validate_rows(self, videos: Iterable[str], progress: bool = True) -> Optional[str]:
        """Every row the videos use is finite (one sequential pass over feature.bin in 32 MiB chunks);
        gives the far_rows_warning of the used rows, if any."""
        from tqdm.auto import tqdm

        used = np.zeros(self.n_rows, dtype=bool)
        for video in videos:
            used[self.index.rows(video)] = True
        norms = np.zeros(self.n_rows, dtype=np.float64)
        step = max(1, (32 << 20) // (4 * self.dim))
        with tqdm(total=self.n_rows, desc="check frame rows", unit="row", unit_scale=True,
                  disable=not progress) as bar:
            for lo in range(0, self.n_rows, step):
                chunk = self.memmap[lo:lo + step]
                bad = np.flatnonzero(used[lo:lo + step] & ~np.isfinite(chunk).all(axis=1))
                if len(bad):
                    row = lo + int(bad[0])
                    raise DataError(f"{self.bin_path}: row {row} ({self.index.describe_row(row)}): expected finite "
                                    f"values, found NaN or inf")
                norms[lo:lo + len(chunk)] = row_norms(chunk)
                bar.update(len(chunk))
        rows = np.flatnonzero(used)
        return far_rows_warning(norms[rows], lambda i: self.index.describe_row(int(rows[i])), self.bin_path, "frame")

    def close(self) -> None:
        self._memmap.close()


class H5FrameStore:
    """The per-video HDF5 variant: one dataset per video id, (frames, Dv)."""

    variant = "hdf5"

    def __init__(self, path: Path):
        self.rows = H5Rows(Path(path), "frame features", "video")
        self.path, self.dim = self.rows.path, self.rows.dim
        self._videos: Optional[list[str]] = None

    def video_ids(self) -> list[str]:
        if self._videos is None:
            self._videos = self.rows.keys()
        return self._videos

    def has_video(self, video: str) -> bool:
        return self.rows.has(video)

    def n_frames(self, video: str) -> int:
        return self.rows.n_rows(video)

    def read(self, video: str) -> np.ndarray:
        return self.rows.read(video)

    @property
    def listing_path(self) -> Path:
        return self.path

    def check_video(self, video: str) -> None:
        self.rows.dataset(video)

    def validate_rows(self, videos: Iterable[str], progress: bool = True) -> Optional[str]:
        """Every video's rows are finite; gives the far_rows_warning of all their rows, if any."""
        from tqdm.auto import tqdm

        names = list(videos)
        norms = [row_norms(self.rows.read(video))
                 for video in tqdm(names, desc="check frame rows", unit="video", disable=not progress)]
        return far_rows_by_id(norms, names, self.path, "frame", "video")

    def close(self) -> None:
        self.rows.close()


FrameStore = Union[BinFrameStore, H5FrameStore]


def open_frame_store(feature_dir: Path, video_feature_file: Optional[PathLike] = None) -> FrameStore:
    """feature.bin when present, else feature.hdf5 (or the HDF5 file named explicitly)."""
    if video_feature_file:
        return H5FrameStore(Path(video_feature_file))
    if (feature_dir / "feature.bin").is_file():
        return BinFrameStore(feature_dir)
    if (feature_dir / "feature.hdf5").is_file():
        return H5FrameStore(feature_dir / "feature.hdf5")
    if not feature_dir.is_dir():
        parent = feature_dir.parent
        have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise DataError(f"{feature_dir}: missing feature folder (expected FeatureData/{feature_dir.name}/; "
                        f"found {shorten(have) if have else 'no feature folders'})")
    raise DataError(f"{feature_dir / 'feature.bin'}: missing file; expected feature.bin (with id.txt, shape.txt, "
                    f"video2frames.txt) or feature.hdf5 in {feature_dir}")


def convert_bin_to_hdf5(feature_dir: PathLike, out_path: PathLike, videos: Optional[Iterable[str]] = None,
                        progress: bool = True) -> Path:
    """Write one HDF5 dataset per video (frames, Dv) from a feature.bin folder; atomic (temp file, rename).

    ``videos`` restricts the output (default: every video of video2frames.txt).
    """
    from tqdm.auto import tqdm

    store = BinFrameStore(Path(feature_dir))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(videos) if videos is not None else store.video_ids()
    tmp = out.with_name(out.name + ".partial")
    try:
        with h5py.File(tmp, "w") as f:
            for video in tqdm(names, desc=f"convert {store.dir.name}", unit="video", disable=not progress):
                if "/" in video or video in (".", ""):
                    raise DataError(f"{store.v2f_path}: video id {shorten(video)} cannot name an HDF5 dataset")
                f.create_dataset(video, data=store.read(video))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        store.close()
    return out
