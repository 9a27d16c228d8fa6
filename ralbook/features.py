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
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import h5py
import numpy as np

from ralbook.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]
NORM_EPS = 1e-5          # added to the row norm before dividing (docs/method.md#inputs)
ID_ENCODING = "ISO-8859-1"


# ----------------------------------------------------------------------------- preprocessing

def l2_normalize(x: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """Rows divided by (their L2 norm + eps), in float32 like the public code."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + np.float32(eps))


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
            out[bins] = x[start[bins][:, None] + np.arange(count)].sum(axis=1) / np.float32(count)
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
        raise DataError(f"{path}: expected two integers \"NUM_ROWS DIM\", found {' '.join(text)[:80]!r}") from None
    if rows < 0 or dim < 1:
        raise DataError(f"{path}: expected NUM_ROWS >= 0 and DIM >= 1, found {rows} {dim}")
    return rows, dim


def read_ids(path: Path) -> list[str]:
    """``id.txt``: whitespace separated row ids, ISO-8859-1 text."""
    return require_file(path, "the row (frame) ids, whitespace separated").read_text(encoding=ID_ENCODING).split()


def _fast_literal(text: str) -> Any:
    """The literal parsed by the JSON parser when that is provably equivalent, else None.

    With no backslash and only one kind of quote, every string is delimited by that quote and
    contains neither quote, so swapping it for '"' gives JSON with the same strings (anything
    else JSON rejects falls back to ``ast.literal_eval``). About 50x faster than ``ast`` on the
    tens-of-MB files of the real releases.
    """
    if "\\" in text or ("'" in text and '"' in text):
        return None
    try:
        return json.loads(text.replace("'", '"'))
    except json.JSONDecodeError:
        return None


def read_video2frames(path: Path) -> dict[str, list[str]]:
    """``video2frames.txt`` parsed as a Python literal (never executed), checked to be {str: [str, ...]}."""
    text = require_file(path, "a Python dict literal {video id: [frame id, ...]}").read_text(encoding=ID_ENCODING)
    try:
        value = _fast_literal(text)
        if value is None:
            value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise DataError(f"{path}: expected a plain dict literal {{video id: [frame id, ...]}}, found something "
                        f"else ({type(err).__name__}: {str(err)[:80]}); the file is never executed as code") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a dict literal {{video id: [frame id, ...]}}, "
                        f"found a {type(value).__name__}")
    for video, frames in value.items():
        if not isinstance(video, str) or not isinstance(frames, (list, tuple)) \
                or not all(isinstance(f, str) for f in frames):
            raise DataError(f"{path}: video {video!r}: expected a string key and a list of frame-id strings, "
                            f"found {type(video).__name__} -> {type(frames).__name__}")
    return {video: list(frames) for video, frames in value.items()}


def check_finite(rows: np.ndarray, path: Path, what: str, row_label: Optional[Callable[[int], str]] = None) -> None:
    """DataError naming the first non-finite row, if any (cheap enough to run on every read)."""
    if rows.size and not np.isfinite(rows).all():
        bad = int(np.flatnonzero(~np.isfinite(rows.reshape(rows.shape[0], -1)).all(axis=1))[0])
        label = row_label(bad) if row_label else f"row {bad}"
        raise DataError(f"{path}: {what} ({label}): expected finite values, found NaN or inf")


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


def open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None


class _H5Opener:
    """Picklable opener (a lambda would not survive spawn-based DataLoader workers)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> h5py.File:
        return open_h5(self.path)


def first_dataset_width(path: Path) -> int:
    """Width of the first 2-D dataset of an HDF5 file (its expected row width)."""
    with open_h5(path) as f:
        for name in f:
            obj = f[name]
            if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
                return int(obj.shape[1])
    raise DataError(f"{path}: expected 2-D float datasets (rows, dim), found none")


class H5Rows:
    """Datasets of one HDF5 file, one per id, each (rows, dim) float32 with dim fixed across the file."""

    def __init__(self, path: Path, kind: str, id_kind: str):
        self.path = require_file(path, f"{kind} (one dataset per {id_kind})")
        self.kind, self.id_kind = kind, id_kind
        self.dim = first_dataset_width(self.path)
        self._file = ProcessLocal(_H5Opener(self.path))

    def dataset(self, key: str) -> h5py.Dataset:
        f = self._file.get()
        obj = f.get(key) if key else None
        if not isinstance(obj, h5py.Dataset):
            raise DataError(f"{self.path}: {self.id_kind} {key!r} has no dataset (expected one of shape "
                            f"(rows, {self.dim}))")
        if obj.ndim != 2 or obj.shape[1] != self.dim:
            raise DataError(f"{self.path}: {self.id_kind} {key!r}: expected shape (rows, {self.dim}), "
                            f"found {tuple(obj.shape)}")
        if obj.shape[0] == 0:
            raise DataError(f"{self.path}: {self.id_kind} {key!r}: expected at least one row, found 0")
        return obj

    def n_rows(self, key: str) -> int:
        return int(self.dataset(key).shape[0])

    def read(self, key: str) -> np.ndarray:
        rows = np.asarray(self.dataset(key)[...], dtype=np.float32)
        check_finite(rows, self.path, f"{self.id_kind} {key!r}")
        return rows

    def has(self, key: str) -> bool:
        return bool(key) and isinstance(self._file.get().get(key), h5py.Dataset)

    def keys(self) -> list[str]:
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
            raise DataError(f"{id_path}: frame id {dup!r} is listed more than once (expected unique row ids)")
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
            raise DataError(f"{self.v2f_path}: video {video!r} has zero frames (expected at least one frame id)")
        if self.n_missing[i]:
            j = int(np.flatnonzero(self.flat[lo:hi] < 0)[0])
            raise DataError(f"{self.id_path}: frame id {self.video2frames[video][j]!r} of video {video!r} is not "
                            f"listed (expected every frame id of {self.v2f_path.name} in {self.id_path.name}; "
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
        return f"frame {self.video2frames[video][int(hits[0] - self.offsets[i])]!r} of video {video!r}"

    def _pos(self, video: str) -> int:
        try:
            return self.position[video]
        except KeyError:
            raise DataError(f"{self.v2f_path}: video {video!r} is not listed (expected a key "
                            f"{video!r} among its {len(self.position)} videos)") from None


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
            check_finite(rows, self.bin_path, f"video {video!r}",
                         lambda j: f"frame {self.index.video2frames[video][j]!r}")
        return rows

    @property
    def listing_path(self) -> Path:
        """The file that says which videos exist."""
        return self.v2f_path

    def check_video(self, video: str) -> None:
        """Listed, with at least one frame, every frame id in id.txt (no feature rows read)."""
        self.index.rows(video)

    def validate_rows(self, videos: Iterable[str], progress: bool = True) -> None:
        """Every row the videos use is finite: one sequential pass over feature.bin in 64 MiB chunks."""
        from tqdm.auto import tqdm

        used = np.zeros(self.n_rows, dtype=bool)
        for video in videos:
            used[self.index.rows(video)] = True
        step = max(1, (64 << 20) // (4 * self.dim))
        with tqdm(total=self.n_rows, desc="check frame rows", unit="row", unit_scale=True,
                  disable=not progress) as bar:
            for lo in range(0, self.n_rows, step):
                chunk = self.memmap[lo:lo + step]
                bad = np.flatnonzero(used[lo:lo + step] & ~np.isfinite(chunk).all(axis=1))
                if len(bad):
                    row = lo + int(bad[0])
                    raise DataError(f"{self.bin_path}: row {row} ({self.index.describe_row(row)}): expected finite "
                                    f"values, found NaN or inf")
                bar.update(len(chunk))

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

    def validate_rows(self, videos: Iterable[str], progress: bool = True) -> None:
        from tqdm.auto import tqdm

        for video in tqdm(list(videos), desc="check frame rows", unit="video", disable=not progress):
            self.rows.read(video)

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
                        f"found {have or 'no feature folders'})")
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
                    raise DataError(f"{store.v2f_path}: video id {video!r} cannot name an HDF5 dataset")
                f.create_dataset(video, data=store.read(video))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        store.close()
    return out
