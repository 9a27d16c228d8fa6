"""Video files in, sampled RGB frames out: listing a folder or a list file, decoding with PyAV,
and picking frames by time (``--fps``) or evenly (``--frames-per-video``).

Decoding is the slow, failure-prone part of feature extraction, so it lives apart from the
encoders: a file PyAV cannot open or that yields no frame raises :class:`VideoReadError`, which
the ``extract`` command collects into its summary instead of stopping.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ralbook.errors import RalbookError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
VIDEO_EXTRA = 'pip install -e ".[video]"'
TIME_EPS = 1e-6   # seconds: frame times are rationals turned into floats


class VideoReadError(RalbookError):
    """One video file could not be decoded, or held no frame."""


def require_av():
    """The PyAV module, or a RalbookError saying which extra to install."""
    try:
        import av
    except ImportError:
        raise RalbookError(f"reading videos needs PyAV (the optional 'video' extra): {VIDEO_EXTRA}") from None
    return av


# ----------------------------------------------------------------------------- which files

def video_id(path: Path) -> str:
    """The id a video gets in the collection: its file name without a video extension, whitespace
    and '#' replaced by '_' (ids are whitespace separated in id.txt, and '#' ends a video id in
    caption ids)."""
    name = path.stem if path.suffix.lower() in VIDEO_EXTENSIONS else path.name
    return re.sub(r"[\s#]+", "_", name)


def list_videos(source: str | Path) -> list[Path]:
    """Video files of a folder (recursively, by extension, sorted) or of a list file (one path per
    line, relative paths taken from the list's folder, '#' comments and blank lines skipped)."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if source.is_file():
        paths = []
        for line in source.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                paths.append(p if p.is_absolute() else source.parent / p)
        return paths
    raise RalbookError(f"{source}: no such folder or list file (expected a folder of videos or a text file "
                       f"with one video path per line)")


def unique_ids(paths: Sequence[Path]) -> dict[str, Path]:
    """{video id: path}; two files with the same id are an error naming both."""
    out: dict[str, Path] = {}
    for p in paths:
        vid = video_id(p)
        if vid in out:
            raise RalbookError(f"{p}: video id {vid!r} is already used by {out[vid]} (expected distinct file "
                               f"names; rename one of them)")
        out[vid] = p
    return out


# ----------------------------------------------------------------------------- sampling

@dataclass
class Sampling:
    """How frames are picked: ``fps`` frames per second of video, or ``per_video`` evenly spaced frames."""

    fps: Optional[float] = 1.0
    per_video: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.fps is None) == (self.per_video is None):
            raise RalbookError(f"choose exactly one of --fps and --frames-per-video (got fps={self.fps}, "
                               f"frames per video={self.per_video})")
        if self.fps is not None and not self.fps > 0:
            raise RalbookError(f"--fps must be > 0, got {self.fps}")
        if self.per_video is not None and self.per_video < 1:
            raise RalbookError(f"--frames-per-video must be >= 1, got {self.per_video}")

    def even_targets(self, duration: float) -> np.ndarray:
        """Times (s) of ``per_video`` evenly spaced frames in ``duration`` seconds: the centres of equal parts."""
        return (np.arange(self.per_video) + 0.5) * duration / self.per_video


def pick_frames(times: Sequence[float], targets: np.ndarray) -> list[int]:
    """Index of the first frame at or after each target time (the last frame for targets past the
    end); a frame chosen twice is kept once, so short videos are not padded with repeats."""
    times = np.asarray(times, dtype=np.float64)
    idx = np.minimum(np.searchsorted(times, np.asarray(targets) - TIME_EPS), len(times) - 1)
    return sorted(set(int(i) for i in idx))


@dataclass
class DecodedVideo:
    """Sampled frames (n, size, size, 3) uint8 with their times (s), and what the file said of itself."""

    frames: np.ndarray
    times: list[float]
    duration: float
    native_fps: Optional[float]


def _resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side equal to ``size``."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


class _ByTime:
    """Keeps a frame when a sampling time k / fps falls in (previous frame's time, its own time]:
    the first frame at or after each sampling time, in one pass."""

    def __init__(self, fps: float):
        self.fps, self.next_k = fps, 0

    def __call__(self, index: int, t: float) -> bool:
        if t + TIME_EPS < self.next_k / self.fps:
            return False
        self.next_k = int(np.floor((t + TIME_EPS) * self.fps)) + 1
        return True


def _rgb(frame, size: int) -> np.ndarray:
    """The frame as RGB, shorter side resized to ``size`` (bicubic), centre-cropped to size x size."""
    w, h = _resize_shape(frame.width, frame.height, size)
    return _center_crop(frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BICUBIC"), size)


def _decode_pass(path: Path, keep: Callable[[int, float], bool], size: int
                 ) -> tuple[list[float], list[tuple[float, np.ndarray]], Optional[float]]:
    """One decoding pass: every frame's time (from the first frame), the frames ``keep(index, time)``
    accepts as (time, RGB image), and the stream's average frame rate. Only kept frames are converted."""
    av = require_av()
    times: list[float] = []
    kept: list[tuple[float, np.ndarray]] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else None
        start: Optional[float] = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            start = float(frame.time) if start is None else start
            times.append(float(frame.time) - start)
            if keep(len(times) - 1, times[-1]):
                kept.append((times[-1], _rgb(frame, size)))
    return times, kept, rate


def decode(path: Path, sampling: Sampling, size: int) -> DecodedVideo:
    """Decode ``path`` and return the sampled frames, resized (shorter side ``size``, bicubic) and
    centre-cropped to ``size`` x ``size`` as the CLIP image tower expects.

    Sampling by time needs one pass. Evenly spaced frames need the duration first, and containers
    often state none or a wrong one, so a first pass reads the frame times and a second converts
    the chosen frames.
    """
    av = require_av()
    try:
        if sampling.fps is not None:
            times, kept, rate = _decode_pass(path, _ByTime(sampling.fps), size)
        else:
            times, _, rate = _decode_pass(path, lambda i, t: False, size)
            if times:
                chosen = set(pick_frames(times, sampling.even_targets(_duration(times, rate))))
                times, kept, rate = _decode_pass(path, lambda i, t: i in chosen, size)
    except (av.FFmpegError, OSError, ValueError, IndexError) as err:
        raise VideoReadError(f"{path}: cannot decode ({type(err).__name__}: {str(err)[:80]})") from None
    if not times or not kept:
        raise VideoReadError(f"{path}: no video frame could be decoded (expected at least one)")
    return DecodedVideo(np.stack([img for _, img in kept]), [t for t, _ in kept], _duration(times, rate), rate)


def _duration(times: Sequence[float], rate: Optional[float]) -> float:
    """From the first frame to the end of the last: its time plus one frame period."""
    step = 1.0 / rate if rate else (times[-1] - times[0]) / max(len(times) - 1, 1)
    return times[-1] - times[0] + step
