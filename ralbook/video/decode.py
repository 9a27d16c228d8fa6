"""Video files in, sampled RGB frames out: listing a folder or a list file, decoding with PyAV,
and picking frames by time (``--fps``) or evenly (``--frames-per-video``).

Decoding is the slow, failure-prone part of feature extraction, so it lives apart from the
encoders: a file PyAV cannot open or that yields no frame raises :class:`VideoReadError`, which
the ``extract`` command collects into its summary instead of stopping.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

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


@dataclass
class VideoInfo:
    """What decoding learns about a file: the time of every frame (s, from the first) and the stream's rate."""

    times: list[float] = field(default_factory=list)
    rate: Optional[float] = None

    @property
    def duration(self) -> float:
        """From the first frame to the end of the last: its time plus one frame period."""
        step = 1.0 / self.rate if self.rate else (self.times[-1] - self.times[0]) / max(len(self.times) - 1, 1)
        return self.times[-1] - self.times[0] + step


def _decode_pass(path: Path, keep: Callable[[int, float], bool], size: int,
                 info: VideoInfo) -> Iterator[tuple[float, np.ndarray]]:
    """One decoding pass: yields (time, RGB image) of the frames ``keep(index, time)`` accepts (only
    those are converted) and records every frame's time in ``info``."""
    av = require_av()
    info.times.clear()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info.rate = float(stream.average_rate) if stream.average_rate else None
        start: Optional[float] = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            start = float(frame.time) if start is None else start
            info.times.append(float(frame.time) - start)
            if keep(len(info.times) - 1, info.times[-1]):
                yield info.times[-1], _rgb(frame, size)


def iter_frames(path: Path, sampling: Sampling, size: int,
                info: Optional[VideoInfo] = None) -> Iterator[tuple[float, np.ndarray]]:
    """The sampled frames of ``path`` as (time, image) pairs, decoded as they are consumed, so memory
    does not grow with the video. Images are resized (shorter side ``size``, bicubic) and
    centre-cropped to ``size`` x ``size`` as the CLIP image tower expects. ``info`` is filled as
    decoding goes. A file that does not decode, or yields no frame, raises VideoReadError.

    Sampling by time needs one pass. Evenly spaced frames need the duration first, and containers
    often state none or a wrong one, so a first pass reads the frame times and a second converts
    the chosen frames.
    """
    av = require_av()
    info = VideoInfo() if info is None else info
    n = 0
    try:
        if sampling.fps is not None:
            keep: Callable[[int, float], bool] = _ByTime(sampling.fps)
        else:
            for _ in _decode_pass(path, lambda i, t: False, size, info):
                pass
            chosen = set(pick_frames(info.times, sampling.even_targets(info.duration))) if info.times else set()
            keep = lambda i, t: i in chosen  # noqa: E731
        for item in _decode_pass(path, keep, size, info):
            n += 1
            yield item
    except (av.FFmpegError, OSError, ValueError, IndexError) as err:
        raise VideoReadError(f"{path}: cannot decode ({type(err).__name__}: {str(err)[:80]})") from None
    if n == 0:
        raise VideoReadError(f"{path}: no video frame could be decoded (expected at least one)")


def decode(path: Path, sampling: Sampling, size: int) -> DecodedVideo:
    """All sampled frames of ``path`` at once (see :func:`iter_frames`)."""
    info = VideoInfo()
    items = list(iter_frames(path, sampling, size, info))
    return DecodedVideo(np.stack([img for _, img in items]), [t for t, _ in items], info.duration, info.rate)
