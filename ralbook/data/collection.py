"""The data layer: a feature release on disk (``data/README.md``) as a :class:`Collection`, the
torch datasets and collate functions the training and evaluation code use, a validator that
turns every known kind of broken copy into one clear :class:`DataError`, and the ``inspect``
command.

Everything is read on demand (frame rows through a memory map, text rows from HDF5), so the
multi-GB releases work on machines with less memory than the files.
"""
from __future__ import annotations

import json
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ralbook.config import Config
from ralbook.data.caption_checks import empty_caption_warning
from ralbook.data.features import (FrameStore, H5Rows, PathLike, far_rows_by_id, open_frame_store, query_input,
                                   require_file, row_norms, video_inputs)
from ralbook.errors import CheckpointError, DataError, shorten


SPLITS = ("train", "val", "test")
# Visual feature folder of each released collection (data/README.md); others name theirs with --feature.
DEFAULT_FEATURES: dict[str, str] = {"tvr": "i3d_resnet", "activitynet": "i3d", "charades": "i3d_rgb_lgi",
                                    "demo": "synthetic"}


def video_of(cap_id: str) -> str:
    """Caption ids are VIDEOID#enc#N: the video id is everything before the first '#'."""
    return cap_id.split("#", 1)[0]


# ----------------------------------------------------------------------------- caption files

@dataclass
class CaptionFile:
    """One parsed ``COLLECTION{split}.caption.txt``."""

    path: Path
    cap_ids: list[str]
    texts: list[str]
    by_video: dict[str, list[str]]      # insertion order = order of first appearance

    @classmethod
    def read(cls, path: Path) -> "CaptionFile":
        """Parse the file; a repeated id, or an id with a control character or bytes that are not UTF-8, is refused.

        Why refuse such ids: HDF5 cuts a key at a NUL, so two different ids could silently name one dataset.
        """
        require_file(path, '"CAPID caption text" lines')
        cap_ids, texts, line_of, by_video = [], [], {}, {}
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
            for number, line in enumerate(fh, 1):
                parts = line.strip().split(maxsplit=1)
                if not parts:
                    continue
                cap = parts[0]
                bad = next((ch for ch in cap if unicodedata.category(ch) in ("Cc", "Cs")), None)
                if bad is not None:
                    what = "bytes that are not UTF-8" if unicodedata.category(bad) == "Cs" else \
                        f"the control character U+{ord(bad):04X}"
                    raise DataError(f"{path}: line {number}: caption id {shorten(_readable(cap))} contains {what} "
                                    f"(expected printable UTF-8 ids such as VIDEOID#enc#0)")
                if cap in line_of:
                    raise DataError(f"{path}: line {number}: caption id {shorten(cap)} already appears on line "
                                    f"{line_of[cap]} (expected unique caption ids)")
                line_of[cap] = number
                cap_ids.append(cap)
                texts.append(_readable(parts[1]) if len(parts) > 1 else "")
                by_video.setdefault(video_of(cap), []).append(cap)
        return cls(path, cap_ids, texts, by_video)


def _readable(text: str) -> str:
    """Undecodable bytes (kept as surrogates while reading) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# ----------------------------------------------------------------------------- the collection

def _resolve(path: PathLike, base: Path) -> Path:
    """A path as given when it exists, else relative to ``base`` (the folder it normally lives in)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else base / p


def default_feature(collection_dir: Path, collection: str) -> str:
    """The released feature folder of a known collection, or the only folder under FeatureData/."""
    if collection in DEFAULT_FEATURES:
        return DEFAULT_FEATURES[collection]
    base = collection_dir / "FeatureData"
    have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if len(have) == 1:
        return have[0]
    raise DataError(f"{base}: no default feature for collection {shorten(collection)}; name one with --feature "
                    f"(found {shorten(have) if have else 'no feature folders'})")


class Collection:
    """A release-layout directory ``root/collection/``: captions, text features and frame features.

    ``feature`` defaults per collection (DEFAULT_FEATURES). ``text_feature_file`` overrides
    TextData/roberta_COLLECTION_query_feat.hdf5; ``video_feature_file`` selects a per-video HDF5
    file instead of FeatureData/FEATURE/feature.bin (which is preferred when present, else
    feature.hdf5). ``n_clips``/``max_frames``/``max_desc_len`` are the docs/method.md#inputs lengths.
    """

    def __init__(self, root: PathLike, collection: str, feature: Optional[str] = None,
                 text_feature_file: Optional[PathLike] = None, *, video_feature_file: Optional[PathLike] = None,
                 n_clips: int = 32, max_frames: int = 128, max_desc_len: int = 30):
        self.root, self.name = Path(root), collection
        self.dir = self.root / collection
        if not self.dir.is_dir():
            if self.root.is_dir():
                held = sorted(p.name for p in self.root.iterdir() if p.is_dir())
                found = f"{self.root} holds {shorten(held) if held else 'nothing'}"
            else:
                found = f"{self.root} does not exist"
            raise DataError(f"{self.dir}: missing collection folder (expected ROOT/{collection}/ in the release "
                            f"layout; {found})")
        self.feature = feature or default_feature(self.dir, collection)
        self.text_dir = self.dir / "TextData"
        self.feature_dir = self.dir / "FeatureData" / self.feature
        video_file = _resolve(video_feature_file, self.feature_dir) if video_feature_file else None
        self.frames: FrameStore = open_frame_store(self.feature_dir, video_file)
        text_file = _resolve(text_feature_file, self.text_dir) if text_feature_file else \
            self.text_dir / f"roberta_{collection}_query_feat.hdf5"
        self.text = H5Rows(text_file, "text features", "caption id")
        self.n_clips, self.max_frames, self.max_desc_len = n_clips, max_frames, max_desc_len
        self._captions: dict[str, CaptionFile] = {}
        self._words: Optional[dict[str, list[str]]] = None

    @classmethod
    def from_config(cls, cfg: Any) -> "Collection":
        """From a :class:`ralbook.config.DataConfig`."""
        return cls(cfg.data_root, cfg.collection, cfg.feature, cfg.text_feature_file or None,
                   n_clips=cfg.n_clips, max_frames=cfg.max_frames, max_desc_len=cfg.max_desc_len)

    def __repr__(self) -> str:
        return (f"Collection({str(self.root)!r}, {self.name!r}, {self.feature!r}, variant={self.frames.variant!r}, "
                f"Dv={self.visual_dim}, Dt={self.text_dim})")

    def close(self) -> None:
        """Close this process's file handles (they reopen on the next read)."""
        self.frames.close()
        self.text.close()

    @property
    def visual_dim(self) -> int:
        return self.frames.dim

    @property
    def text_dim(self) -> int:
        return self.text.dim

    # --- captions
    def caption_file(self, split: str) -> Path:
        return self.text_dir / f"{self.name}{split}.caption.txt"

    def _split(self, split: str) -> CaptionFile:
        if split not in self._captions:
            self._captions[split] = CaptionFile.read(self.caption_file(split))
        return self._captions[split]

    def videos(self, split: str) -> list[str]:
        """Video ids of a split, in order of first appearance in its caption file."""
        return list(self._split(split).by_video)

    def captions(self, split: str) -> list[tuple[str, str]]:
        """(cap_id, text) in file order."""
        cf = self._split(split)
        return list(zip(cf.cap_ids, cf.texts))

    def captions_of(self, video_id: str, split: str) -> list[str]:
        """Caption ids of one video in a split's caption file (file order)."""
        cf = self._split(split)
        if video_id not in cf.by_video:
            raise DataError(f"{cf.path}: video {shorten(video_id)} has no caption (expected at least one line "
                            f"starting {shorten(video_id + '#')})")
        return list(cf.by_video[video_id])

    video_of = staticmethod(video_of)

    def same_captions(self, split_a: str, split_b: str) -> bool:
        """True when two caption files hold the same (cap_id, text) pairs (some releases ship val == test)."""
        return set(self.captions(split_a)) == set(self.captions(split_b))

    # --- features
    def raw_frames(self, video_id: str) -> np.ndarray:
        """Frame rows (n, Dv) float32 of one video: only its rows are read (a copy, not a view of the file)."""
        return self.frames.read(video_id)

    def n_frames(self, video_id: str) -> int:
        return self.frames.n_frames(video_id)

    def text_features(self, cap_id: str) -> np.ndarray:
        """Token rows (L, Dt) float32 of one caption."""
        return self.text.read(cap_id)

    def n_tokens(self, cap_id: str) -> int:
        return self.text.n_rows(cap_id)

    def words(self, cap_id: str) -> Optional[list[str]]:
        """The caption's words, one per token row, from the optional TextData/COLLECTION_words.json."""
        path = self.text_dir / f"{self.name}_words.json"
        if self._words is None:
            try:
                self._words = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
                raise DataError(f"{path}: expected a JSON object {{cap_id: [word, ...]}}, found invalid JSON "
                                f"({shorten(str(err))})") from None
            if not isinstance(self._words, dict):
                found, self._words = type(self._words).__name__, None
                raise DataError(f"{path}: expected a JSON object {{cap_id: [word, ...]}}, found a {found}")
        words = self._words.get(cap_id)
        if words is not None and not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise DataError(f"{path}: caption id {shorten(cap_id)}: expected a list of words, found "
                            f"{shorten(words)}")
        return words

    def video_arrays(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs of one video: (clips (n_clips, Dv), frames (<= max_frames, Dv)), normalised rows."""
        return video_inputs(self.raw_frames(video_id), self.n_clips, self.max_frames)

    def query_array(self, cap_id: str) -> np.ndarray:
        """Model input of one caption: (<= max_desc_len, Dt) normalised rows."""
        return query_input(self.text_features(cap_id), self.max_desc_len)

    # --- checks and statistics
    def validate(self, splits: Sequence[str] = SPLITS, progress: bool = True) -> list[str]:
        """Check every caption, video, frame id and feature row the splits use; DataError on the first problem.

        Normal reads check only what they touch; this reads every used row (chunked) and every caption.
        Gives warnings that do not stop a run: caption lines with an id and no text (ralbook.caption_checks),
        rows whose norm is far above the collection's (far_rows).
        """
        from tqdm.auto import tqdm

        parsed = {split: self._split(split) for split in splits}
        for cf in parsed.values():
            if not cf.cap_ids:
                raise DataError(f"{cf.path}: expected at least one \"CAPID caption text\" line, found none")
            absent = [v for v in cf.by_video if not self.frames.has_video(v)]
            if absent:
                v = absent[0]
                raise DataError(f"{cf.path}: video {shorten(v)} (caption {shorten(cf.by_video[v][0])}) is not "
                                f"listed in {self.frames.listing_path} (expected every captioned video there; "
                                f"{len(absent)} of the {len(cf.by_video)} videos of this file are missing)")
        videos = list(dict.fromkeys(v for cf in parsed.values() for v in cf.by_video))
        for video in videos:
            self.frames.check_video(video)
        found = [empty_caption_warning(cf.path, len(cf.cap_ids)) for cf in parsed.values()]
        found.append(self.frames.validate_rows(videos, progress))
        cap_ids = list(dict.fromkeys(c for cf in parsed.values() for c in cf.cap_ids))
        norms = [row_norms(self.text.read(cap))
                 for cap in tqdm(cap_ids, desc="check text features", unit="caption", disable=not progress)]
        found.append(far_rows_by_id(norms, cap_ids, self.text.path, "token", "caption"))
        return [w for w in found if w]

    def summary(self, splits: Sequence[str] = SPLITS, norm_videos: int = 200, seed: int = 0,
                progress: bool = False) -> "CollectionSummary":
        """Counts and distributions per split (notebook 01 plots them); warns when val and test are identical."""
        from tqdm.auto import tqdm

        rng = np.random.default_rng(seed)
        out: dict[str, SplitSummary] = {}
        for split in splits:
            cf, videos = self._split(split), self.videos(split)
            frames = np.array([self.n_frames(v) for v in tqdm(videos, desc=f"{split} videos", disable=not progress)],
                              dtype=np.int64)
            tokens = np.array([self.n_tokens(c) for c in tqdm(cf.cap_ids, desc=f"{split} captions",
                                                                 disable=not progress)], dtype=np.int64)
            sample = rng.choice(len(videos), size=min(norm_videos, len(videos)), replace=False) if videos else []
            norms = [row_norms(self.raw_frames(videos[i])) for i in sorted(sample)]
            out[split] = SplitSummary(split, str(cf.path), len(videos), len(cf.cap_ids), frames,
                                      np.array([len(cf.by_video[v]) for v in videos], dtype=np.int64), tokens,
                                      np.concatenate(norms) if norms else np.zeros(0))
        notes = []
        for i, a in enumerate(splits):
            for b in splits[i + 1:]:
                if out[a].n_captions and self.same_captions(a, b):
                    notes.append(f"the {a} and {b} caption files hold the same {out[a].n_captions} captions: "
                                 f"model selection on {a} is selection on {b}")
                elif (leak := caption_leaks(self, a, b)) is not None:
                    notes.append(leak)
                else:
                    continue
                warnings.warn(f"collection {shorten(self.name)}: {notes[-1]}", UserWarning, stacklevel=2)
        return CollectionSummary(self.name, self.feature, self.frames.variant, self.visual_dim, self.text_dim,
                                 out, notes)


def _same_text_key(cap_id: str, text: str) -> tuple[str, str]:
    """(video, text with case and spacing ignored): two captions of one video that read the same."""
    return video_of(cap_id), " ".join(text.casefold().split())


def caption_leaks(collection: Collection, first: str, second: str, examples: int = 3) -> Optional[str]:
    """A warning text when two splits share captions: the same id, or the same video with the same text.

    Why: a caption in both the training and the test split is leakage that inflates test metrics.
    None when they share nothing or a caption file cannot be read (reading it reports that).
    """
    try:
        a, b = collection.captions(first), collection.captions(second)
    except (DataError, OSError):
        return None
    ids_a = {c for c, _ in a}
    text_a = {_same_text_key(c, t): c for c, t in a}
    same_id = [c for c, _ in b if c in ids_a]
    same_text = [(text_a[_same_text_key(c, t)], c) for c, t in b
                 if c not in ids_a and _same_text_key(c, t) in text_a]
    if not same_id and not same_text:
        return None
    shown = [shorten(c) for c in same_id[:examples]] + \
        [f"{shorten(x)} = {shorten(y)}" for x, y in same_text[:max(0, examples - len(same_id))]]
    return (f"the {first} and {second} caption files of collection {shorten(collection.name)} share "
            f"{len(same_id)} caption ids and {len(same_text)} more captions of the same video with the same text "
            f"(of {len(b)} {second} captions; leakage inflates metrics on {second}), e.g. {', '.join(shown)}")


@dataclass
class SplitSummary:
    """Counts and per-item distributions of one split (arrays for plotting)."""

    split: str
    caption_file: str
    n_videos: int
    n_captions: int
    frames_per_video: np.ndarray
    captions_per_video: np.ndarray
    tokens_per_caption: np.ndarray
    frame_norms: np.ndarray     # L2 norms of raw frame rows of a sample of videos

    def stats(self, name: str) -> dict[str, float]:
        """min / mean / median / max of one of the array fields."""
        a = np.asarray(getattr(self, name), dtype=np.float64)
        if not a.size:
            return {"min": float("nan"), "mean": float("nan"), "median": float("nan"), "max": float("nan")}
        return {"min": float(a.min()), "mean": float(a.mean()), "median": float(np.median(a)), "max": float(a.max())}


@dataclass
class CollectionSummary:
    """What :meth:`Collection.summary` found; ``format()`` gives the text table ``inspect`` prints."""

    collection: str
    feature: str
    variant: str
    visual_dim: int
    text_dim: int
    splits: dict[str, SplitSummary]
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        head = (f"collection {self.collection!r}, feature {self.feature!r} ({self.variant}), "
                f"Dv {self.visual_dim}, Dt {self.text_dim}")
        cols = ["split", "videos", "captions", "frames/video min-median-max (mean)", "captions/video (mean)",
                "tokens/caption min-max (mean)", "frame norm (mean)"]
        rows = [cols]
        for s in self.splits.values():
            f, c, t, nrm = (s.stats(k) for k in ("frames_per_video", "captions_per_video", "tokens_per_caption",
                                                 "frame_norms"))
            rows.append([s.split, str(s.n_videos), str(s.n_captions),
                         f"{f['min']:.0f}-{f['median']:.0f}-{f['max']:.0f} ({f['mean']:.1f})",
                         f"{c['mean']:.2f}", f"{t['min']:.0f}-{t['max']:.0f} ({t['mean']:.1f})", f"{nrm['mean']:.3g}"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        lines = [head] + ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                          for r in rows]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# ----------------------------------------------------------------------------- torch datasets


# ----------------------------------------------------------------------------- inspect command


def check_dims(cfg: Config, collection: Any) -> None:
    """The model's input sizes must match the collection's features."""
    for name, want, have in (("visual", cfg.model.visual_dim, collection.visual_dim),
                             ("text", cfg.model.text_dim, collection.text_dim)):
        if want != have:
            raise CheckpointError(f"the model expects {name} features of size {want}, but collection "
                                  f"{cfg.data.collection!r} has {have} (wrong --preset or --feature?)")
