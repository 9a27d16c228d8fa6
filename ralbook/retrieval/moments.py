"""Where in a video a query matches: word-frame profiles -> a moment in frames and seconds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ralbook.data.features import bin_edges


@dataclass
class Moment:
    """Frame rows [first_row, last_row] the model saw, the sampled frames [first_frame, last_frame]
    they cover, and those frames' time span in seconds (None without stored times)."""

    first_row: int
    last_row: int
    first_frame: int
    last_frame: int
    start_s: Optional[float] = None
    end_s: Optional[float] = None

    def format(self, n_frames: int) -> str:
        where = f"frames {self.first_frame}-{self.last_frame} of {n_frames}"
        if self.start_s is None:
            return where
        return f"{self.start_s:.1f}-{self.end_s:.1f} s ({where})"


def peak_span(profile: np.ndarray) -> tuple[int, int]:
    """[first, last] rows of the run around the profile's maximum that stays >= (median + max) / 2."""
    profile = np.asarray(profile, dtype=np.float64)
    peak = int(np.argmax(profile))
    level = (np.median(profile) + profile[peak]) / 2.0
    first = last = peak
    while first > 0 and profile[first - 1] >= level:
        first -= 1
    while last < len(profile) - 1 and profile[last + 1] >= level:
        last += 1
    return first, last


def rows_to_frames(first_row: int, last_row: int, n_frames: int, max_frames: int) -> tuple[int, int]:
    """Sampled frames [first, last] under frame rows [first_row, last_row] (the binning of features.bin_rows)."""
    if n_frames <= max_frames:
        return first_row, last_row
    edges = bin_edges(n_frames, max_frames)
    return int(edges[first_row]), int(max(edges[last_row + 1] - 1, edges[last_row]))


def frames_to_seconds(first: int, last: int, times: Sequence[float]) -> tuple[float, float]:
    """From the first frame's time to the end of the last one (the next frame's time, or one median
    frame step past the last frame of the video)."""
    times = [float(t) for t in times]
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    end = times[last + 1] if last + 1 < len(times) else times[last] + step
    return times[first], end


def moment_of(similarity: np.ndarray, confidence: np.ndarray, n_frames: int, max_frames: int,
              times: Optional[Sequence[float]] = None) -> Moment:
    """The best-matching moment from a (words, frame rows) cosine matrix and the words' confidence."""
    profile = np.asarray(confidence, dtype=np.float64)[: similarity.shape[0]] @ similarity
    first_row, last_row = peak_span(profile)
    first, last = rows_to_frames(first_row, last_row, n_frames, max_frames)
    moment = Moment(first_row, last_row, first, last)
    if times is not None and len(times) == n_frames:
        moment.start_s, moment.end_s = frames_to_seconds(first, last, times)
    return moment


def _word_frame_matrix(queries: Any, i: int, videos: Any, j: int) -> np.ndarray:
    """Cosines (valid words of encoded query i) x (valid frames of encoded video j)."""
    w = torch.nn.functional.normalize(queries.words[i], dim=-1)[queries.mask[i] > 0]
    f = torch.nn.functional.normalize(videos.frames[j], dim=-1)[videos.mask[j] > 0]
    return (w @ f.T).float().cpu().numpy()
