"""A tiny, independent writer of the PRVR feature-release layout, for tests.

It shares no code with ``ralbook.data`` (a reader tested against its own writer would prove
little). Tests import it as ``from layout import ...`` (pytest puts tests/ on sys.path).

    ROOT/NAME/TextData/NAME{split}.caption.txt, roberta_NAME_query_feat.hdf5, NAME_words.json
    ROOT/NAME/FeatureData/FEATURE/feature.bin, id.txt, shape.txt, video2frames.txt   (variant "bin")
    ROOT/NAME/FeatureData/FEATURE/feature.hdf5                                        (variant "hdf5")
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

# Frame counts that hit every preprocessing branch: 1 row, fewer than 32, exactly 32 and 128,
# just above 128 (last bin is a single row), and far above.
FRAME_COUNTS = (1, 5, 31, 32, 128, 129, 300, 40, 17, 64, 2, 200)
# Token counts, some above the 30 kept.
TOKEN_COUNTS = (1, 7, 12, 30, 31, 45, 3, 20)


@dataclass
class TinySpec:
    """What was written: the arrays a reader must give back exactly."""

    root: Path
    name: str
    feature: str
    frames: dict[str, np.ndarray]                   # video id -> (n, Dv) float32
    frame_ids: dict[str, list[str]]                 # video id -> its frame ids (in order)
    captions: dict[str, list[tuple[str, str]]]      # split -> [(cap_id, text)] in file order
    text: dict[str, np.ndarray]                     # cap id -> (L, Dt) float32
    words: dict[str, list[str]]

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def feature_dir(self) -> Path:
        return self.dir / "FeatureData" / self.feature

    @property
    def text_file(self) -> Path:
        return self.dir / "TextData" / f"roberta_{self.name}_query_feat.hdf5"

    def caption_file(self, split: str) -> Path:
        return self.dir / "TextData" / f"{self.name}{split}.caption.txt"

    def videos(self, split: str) -> list[str]:
        return list(dict.fromkeys(c.split("#")[0] for c, _ in self.captions[split]))


def write_layout(spec: TinySpec, variant: str = "bin", row_order: str = "contiguous", seed: int = 0) -> TinySpec:
    """Write ``spec`` to disk. ``row_order``: "contiguous" (each video's rows consecutive) or
    "shuffled" (rows permuted, so reads need an index array)."""
    text_dir, feat_dir = spec.dir / "TextData", spec.feature_dir
    text_dir.mkdir(parents=True, exist_ok=True)
    feat_dir.mkdir(parents=True, exist_ok=True)
    for split, caps in spec.captions.items():
        spec.caption_file(split).write_text("".join(f"{c} {t}\n" for c, t in caps), encoding="utf-8")
    with h5py.File(spec.text_file, "w") as f:
        for cap, rows in spec.text.items():
            f.create_dataset(cap, data=rows)
    (text_dir / f"{spec.name}_words.json").write_text(json.dumps(spec.words), encoding="utf-8")
    if variant == "hdf5":
        with h5py.File(feat_dir / "feature.hdf5", "w") as f:
            for video, rows in spec.frames.items():
                f.create_dataset(video, data=rows)
        return spec
    ids = [fid for video in spec.frames for fid in spec.frame_ids[video]]
    rows = np.concatenate([spec.frames[v] for v in spec.frames]).astype(np.float32)
    if row_order == "shuffled":
        perm = np.random.default_rng(seed).permutation(len(ids))
        ids, rows = [ids[i] for i in perm], rows[perm]
    rows.tofile(feat_dir / "feature.bin")
    (feat_dir / "id.txt").write_text(" ".join(ids) + "\n", encoding="latin-1")
    (feat_dir / "shape.txt").write_text(f"{rows.shape[0]} {rows.shape[1]}\n")
    (feat_dir / "video2frames.txt").write_text(repr(spec.frame_ids) + "\n", encoding="latin-1")
    return spec


def random_spec(root: Path, seed: int = 0, n_videos: tuple[int, int, int] = (6, 3, 3), dv: int = 8, dt: int = 6,
                name: str = "tiny", feature: str = "feat", val_equals_test: bool = False) -> TinySpec:
    """Random features for three splits; captions of a video are interleaved with other videos'."""
    rng = np.random.default_rng(seed)
    frames, frame_ids, text, words, captions = {}, {}, {}, {}, {}
    k = 0
    for split, n in zip(("train", "val", "test"), n_videos):
        videos = [f"{split}{i:02d}" for i in range(n)]
        per_video: list[list[str]] = []
        for v in videos:
            n_frames = FRAME_COUNTS[k % len(FRAME_COUNTS)]
            frames[v] = rng.standard_normal((n_frames, dv)).astype(np.float32)
            # frame ids carry a Latin-1 character: id.txt and video2frames.txt are ISO-8859-1
            frame_ids[v] = [f"{v}_fr\xe9me{j}" for j in range(n_frames)]
            per_video.append([f"{v}#enc#{j}" for j in range(1 + k % 3)])
            k += 1
        order = []  # round robin: video 0 cap 0, video 1 cap 0, ..., video 0 cap 1, ...
        for j in range(max(len(c) for c in per_video)):
            order += [caps[j] for caps in per_video if j < len(caps)]
        captions[split] = []
        for i, cap in enumerate(order):
            n_tokens = TOKEN_COUNTS[(i + k) % len(TOKEN_COUNTS)]
            text[cap] = rng.standard_normal((n_tokens, dt)).astype(np.float32)
            words[cap] = [f"w{t}" for t in range(n_tokens)]
            captions[split].append((cap, " ".join(words[cap])))
    if val_equals_test:
        captions["val"] = list(captions["test"])
    return TinySpec(Path(root), name, feature, frames, frame_ids, captions, text, words)


def write_random_collection(root: Path, variant: str = "bin", row_order: str = "contiguous",
                            **kwargs: object) -> TinySpec:
    """``random_spec`` written to ``root`` (the usual fixture)."""
    return write_layout(random_spec(root, **kwargs), variant=variant, row_order=row_order)  # type: ignore[arg-type]


def rewrite_rows(spec: TinySpec, video: str, frame: int, values: np.ndarray) -> None:
    """Overwrite one frame row of ``video`` inside feature.bin (row located through id.txt, not the reader)."""
    ids = (spec.feature_dir / "id.txt").read_text(encoding="latin-1").split()
    row = ids.index(spec.frame_ids[video][frame])
    dim = next(iter(spec.frames.values())).shape[1]
    mm = np.memmap(spec.feature_dir / "feature.bin", dtype=np.float32, mode="r+", shape=(len(ids), dim))
    mm[row] = values
    mm.flush()
    del mm


def replace_text_dataset(spec: TinySpec, cap_id: str, rows: Optional[np.ndarray]) -> None:
    """Replace (or with None delete) one caption's dataset in the text-feature file."""
    with h5py.File(spec.text_file, "a") as f:
        del f[cap_id]
        if rows is not None:
            f.create_dataset(cap_id, data=rows)
