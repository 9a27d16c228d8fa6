"""The ``extract`` command: a folder of video files (and optional captions) becomes a collection in
the release layout (``data/README.md``) with CLIP features, which ``inspect``, ``train``,
``evaluate`` and ``search`` read unchanged.

Output of ``extract --out ROOT/NAME``::

    NAME/FeatureData/FEATURE/feature.bin id.txt shape.txt video2frames.txt   frame rows, one per sampled frame
    NAME/TextData/NAME{split}.caption.txt                                     captions, "VIDEO#enc#N text"
    NAME/TextData/roberta_NAME_query_feat.hdf5   CLIP token features per caption (the release's file name,
                                                 so the readers need no option; the content is CLIP's)
    NAME/TextData/NAME_words.json                the tokens of each caption, one per feature row
    NAME/videos.json                             per video: source file, times (s) of its frames, duration
    NAME/extract.json                            model, sampling, counts, and the videos that failed
    NAME/.extract/                               resume state: one .npy per finished video + a progress log

Frames stream from the decoder into batches of ``--batch-size`` frames of ONE video, starting at
frames 0, B, 2B, ... of that video, so a frame's features depend on its video and the batch size
only, never on which videos came before it (on some CPUs the image tower's result for a row depends
on the batch's size; README, "Your own videos"). Extraction resumes: a video is saved to
``.extract/`` and logged as soon as its last batch has run, so a rerun with the same settings
(batch size included) skips it and ends with the same bytes. The layout files are rebuilt from that
state at the end of every run.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ralbook.data.collection import SPLITS
from ralbook.data.datasets import batched
from ralbook.data.layout import _json_lines, _write_features, _write_text, _write_text_features
from ralbook.errors import RalbookError
from ralbook.files import write_json
from ralbook.runtime.progress import steps, use_bars
from ralbook.video.clip import words_of
from ralbook.video.decode import (Sampling, VIDEO_EXTENSIONS, VideoInfo, VideoReadError, iter_frames, list_videos,
                                  unique_ids, video_id)


STATE_DIR = ".extract"
PROGRESS_FILE = "progress.jsonl"
SETTINGS_FILE = "settings.json"
DEFAULT_FEATURE = "clip"
DEFAULT_SPLIT = "test"   # the split of captions that name none: evaluate and search read it by default


# ----------------------------------------------------------------------------- captions

@dataclass
class Caption:
    cap_id: str
    video: str
    text: str
    split: str


def read_captions(path: Path, default_split: str = DEFAULT_SPLIT) -> list[Caption]:
    """Tab-separated lines ``VIDEO<TAB>caption text[<TAB>split]`` (split: train, val or test).

    VIDEO is the video's id (its file name without extension, see :func:`ralbook.video.video_id`)
    or its file name. Caption ids become ``VIDEO#enc#N``, N counting the video's captions from 0.
    """
    out: list[Caption] = []
    counts: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise RalbookError(f"{path}: line {number}: expected 'VIDEO<TAB>caption[<TAB>split]', found "
                               f"{line[:80]!r}")
        split = parts[2] if len(parts) == 3 and parts[2] else default_split
        if split not in SPLITS:
            raise RalbookError(f"{path}: line {number}: split {split[:80]!r} is not one of {', '.join(SPLITS)}")
        vid = video_id(Path(parts[0]))
        n = counts.get(vid, 0)
        counts[vid] = n + 1
        out.append(Caption(f"{vid}#enc#{n}", vid, " ".join(parts[1].split()), split))
    return out


# ----------------------------------------------------------------------------- resume state


class ExtractState:
    """``NAME/.extract/``: the settings, one ``VIDEO.npy`` per finished video, and a progress log
    with one JSON line per finished (or failed) video."""

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.dir = out / STATE_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        settings_path = self.dir / SETTINGS_FILE
        if settings_path.is_file():
            saved = json.loads(settings_path.read_text())
            diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
            if diffs:
                raise RalbookError(f"{out} was extracted with other settings ({'; '.join(diffs)[:200]}); use another "
                                   f"--out, the same settings, or delete {self.dir} to start over")
        else:
            write_json(settings_path, settings, indent=1)
        self.records = self._read_log()

    def _read_log(self) -> dict[str, dict[str, Any]]:
        path = self.dir / PROGRESS_FILE
        records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # the line being written when the process was killed
                    continue
                records[rec["video"]] = rec
        return records

    def done(self, vid: str) -> bool:
        rec = self.records.get(vid)
        return bool(rec and rec["status"] == "ok" and self.frames_path(vid).is_file())

    def frames_path(self, vid: str) -> Path:
        return self.dir / f"{vid}.npy"

    def _log(self, rec: dict[str, Any]) -> None:
        with open(self.dir / PROGRESS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records[rec["video"]] = rec

    def save(self, vid: str, features: np.ndarray, info: dict[str, Any]) -> None:
        tmp = self.frames_path(vid).with_suffix(".tmp.npy")
        np.save(tmp, features.astype(np.float32))
        os.replace(tmp, self.frames_path(vid))
        self._log({"video": vid, "status": "ok", **info})

    def fail(self, vid: str, source: Path, error: str) -> None:
        self._log({"video": vid, "status": "failed", "source": str(source), "error": error})


class _FrameBatcher:
    """Frames of one video encoded ``batch_size`` at a time, batches starting at fixed offsets
    (0, B, 2B, ...) within the video and never holding another video's frames: a row's bytes are
    then the same whatever was extracted before it, which is what lets an interrupted extraction
    resume to identical files. A long video never sits in memory whole; its rows are complete once
    its last (possibly shorter) batch has run."""

    def __init__(self, encoder: Any, batch_size: int):
        if batch_size < 1:
            raise RalbookError(f"--batch-size must be >= 1, got {batch_size}")
        self.encoder, self.batch_size = encoder, batch_size
        self.images: list[np.ndarray] = []
        self.owner: Optional[str] = None
        self.rows: dict[str, list[np.ndarray]] = {}
        self.n_encoded = 0

    def add(self, vid: str, image: np.ndarray) -> None:
        if self.owner is not None and self.owner != vid:
            self.flush()   # a batch never spans two videos
        self.images.append(image)
        self.owner = vid
        if len(self.images) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.images:
            return
        rows = self.encoder.encode_frames(np.stack(self.images))
        self.rows.setdefault(self.owner, []).extend(rows)
        self.n_encoded += len(rows)
        self.images, self.owner = [], None

    def pending(self, vid: str) -> bool:
        return self.owner == vid and bool(self.images)

    def take(self, vid: str) -> np.ndarray:
        return np.stack(self.rows.pop(vid))

    def drop(self, vid: str) -> None:
        """Forget a video that failed part-way."""
        if self.owner == vid:
            self.images, self.owner = [], None
        self.rows.pop(vid, None)


class _LazyFrames(Mapping):
    """{video: frame rows} read from the state folder one video at a time (writing needs no more memory)."""

    def __init__(self, state: ExtractState, videos: list[str]):
        self.state, self.videos = state, videos

    def __getitem__(self, vid: str) -> np.ndarray:
        return np.load(self.state.frames_path(vid))

    def __iter__(self) -> Iterator[str]:
        return iter(self.videos)

    def __len__(self) -> int:
        return len(self.videos)


# ----------------------------------------------------------------------------- the extraction

@dataclass
class ExtractSummary:
    """What a run did; ``failed`` maps a video id to the reason it was left out."""

    out: Path
    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    n_frames: int = 0
    captions: dict[str, int] = field(default_factory=dict)
    dropped_captions: int = 0

    def format(self) -> str:
        lines = [f"{self.out}: {len(self.encoded)} videos encoded, {len(self.skipped)} already done (skipped), "
                 f"{len(self.failed)} unreadable or empty; {self.n_frames} frame rows in all"]
        if self.captions:
            lines.append("captions per split: " + ", ".join(f"{s} {n}" for s, n in self.captions.items()))
        if self.dropped_captions:
            lines.append(f"{self.dropped_captions} captions left out: their video is missing or unreadable")
        lines.extend(f"  failed {vid}: {why}" for vid, why in sorted(self.failed.items()))
        return "\n".join(lines)


def extract(videos: str | Path, out: str | Path, encoder: Any, sampling: Sampling,
            captions: Optional[str | Path] = None, feature: str = DEFAULT_FEATURE, batch_size: int = 64,
            progress: bool = True, on_video: Optional[Callable[[str], None]] = None) -> ExtractSummary:
    """Encode every video under ``videos`` (folder or list file) and the captions into ``out``.

    ``encoder`` is a :class:`ralbook.clipfeatures.ClipEncoder` (or anything with ``encode_frames``,
    ``encode_texts``, ``image_size`` and ``describe()``). ``on_video(video_id)`` is called after each
    video is saved (tests interrupt the run there).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    sources = unique_ids(list_videos(videos))
    caps = read_captions(Path(captions)) if captions else []
    settings = {"encoder": encoder.describe(), "fps": sampling.fps, "frames_per_video": sampling.per_video,
                "feature": feature, "batch_size": batch_size}
    state = ExtractState(out, settings)
    summary = ExtractSummary(out)
    bars = use_bars()
    bar = tqdm(sources.items(), desc="extract videos", unit="video", disable=not progress or not bars)
    batcher = _FrameBatcher(encoder, batch_size)
    waiting: list[tuple[str, Path, VideoInfo, list[float]]] = []  # decoded, some rows not yet encoded

    def save_ready() -> None:
        still = []
        for vid, path, info, times in waiting:
            if batcher.pending(vid):
                still.append((vid, path, info, times))
                continue
            state.save(vid, batcher.take(vid), {"source": str(path), "times": [round(t, 4) for t in times],
                                                "duration": round(info.duration, 4), "native_fps": info.rate})
            summary.encoded.append(vid)
            bar.set_postfix(frames=batcher.n_encoded)
            if progress and not bars:  # a log file: one line per video instead of a bar
                print(f"extract videos: {vid} ({len(times)} frames; {batcher.n_encoded} in all)", file=sys.stderr,
                      flush=True)
            if on_video is not None:
                on_video(vid)
        waiting[:] = still

    for vid, path in bar:
        if state.done(vid):
            summary.skipped.append(vid)
            continue
        info, times = VideoInfo(), []
        try:
            for t, image in iter_frames(path, sampling, encoder.image_size, info):
                times.append(t)
                batcher.add(vid, image)
            batcher.flush()   # the video's last batch: its rows are complete
        except VideoReadError as err:
            batcher.drop(vid)
            state.fail(vid, path, str(err))
            continue
        waiting.append((vid, path, info, times))
        save_ready()
    batcher.flush()
    save_ready()
    summary.failed = {v: r["error"] for v, r in state.records.items() if r["status"] == "failed" and v in sources}
    good = sorted(v for v in sources if state.done(v))
    if not sources:
        raise RalbookError(f"{videos}: no video files found (expected names ending in {', '.join(VIDEO_EXTENSIONS)})")
    if not good:
        first = next(iter(summary.failed.values()), "")
        raise RalbookError(f"{videos}: none of the {len(sources)} video files could be read (first: {first[:120]})")
    write_collection(out, feature, state, good, caps, encoder, batch_size, summary, progress)
    return summary


def write_collection(out: Path, feature: str, state: ExtractState, videos: list[str], caps: list[Caption],
                     encoder: Any, batch_size: int, summary: ExtractSummary, progress: bool = True) -> None:
    """The release layout from the resume state: frame features, captions and their token features."""
    frames = _LazyFrames(state, videos)
    _write_features(out / "FeatureData" / feature, videos, frames)
    summary.n_frames = sum(len(state.records[v]["times"]) for v in videos)
    have = set(videos)
    kept = [c for c in caps if c.video in have]
    summary.dropped_captions = len(caps) - len(kept)
    text_dir = out / "TextData"
    text_dir.mkdir(parents=True, exist_ok=True)
    features: dict[str, np.ndarray] = {}
    words: dict[str, list[str]] = {}
    for chunk in steps(list(batched(kept, batch_size)), "encode captions", progress and bool(kept), unit="batches"):
        for cap, tf in zip(chunk, encoder.encode_texts([c.text for c in chunk])):
            features[cap.cap_id] = tf.features
            words[cap.cap_id] = words_of(tf.tokens)
    for split in SPLITS:
        lines = [f"{c.cap_id} {c.text}\n" for c in kept if c.split == split]
        path = text_dir / f"{out.name}{split}.caption.txt"
        if lines:
            _write_text(path, "".join(lines))
            summary.captions[split] = len(lines)
        elif path.exists():
            path.unlink()
    text_files = (text_dir / f"roberta_{out.name}_query_feat.hdf5", text_dir / f"{out.name}_words.json")
    if kept:
        _write_text_features(text_files[0], features)
        _write_text(text_files[1], _json_lines(words))
    else:  # no captions this time: leave no token features of an earlier run behind
        for path in text_files:
            path.unlink(missing_ok=True)
    meta = {v: {k: state.records[v][k] for k in ("source", "times", "duration", "native_fps")} for v in videos}
    _write_text(out / "videos.json", _json_lines(meta))
    info = {"encoder": encoder.describe(), "feature": feature, "n_videos": len(videos), "n_frames": summary.n_frames,
            "captions": summary.captions, "failed": summary.failed}
    _write_text(out / "extract.json", json.dumps(info, indent=1) + "\n")


def read_video_times(collection_dir: str | Path) -> dict[str, list[float]]:
    """{video: times (s) of its frame rows} from ``videos.json`` (empty when the collection has none)."""
    path = Path(collection_dir) / "videos.json"
    if not path.is_file():
        return {}
    return {v: m["times"] for v, m in json.loads(path.read_text(encoding="utf-8")).items()}


# ----------------------------------------------------------------------------- command line


def encoder_settings(collection_dir: Path) -> dict[str, Any]:
    """The model ``extract`` used for this collection (from extract.json), so queries match captions."""
    path = collection_dir / "extract.json"
    return json.loads(path.read_text(encoding="utf-8")).get("encoder", {}) if path.is_file() else {}
