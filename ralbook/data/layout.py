"""The release layout (FeatureData/, TextData/, GroundTruth/) and the writers of its files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _json_lines(mapping: dict[str, Any]) -> str:
    """A JSON object with one entry per line: compact, yet diff- and grep-friendly."""
    items = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in mapping.items()]
    return "{\n" + ",\n".join(items) + "\n}\n"


def _write_text_features(path: Path, features: dict[str, np.ndarray]) -> None:
    import h5py

    # track_times=False and a fixed insertion order keep the file byte-identical for one seed
    with h5py.File(path, "w", track_order=False) as f:
        for cap_id in sorted(features):
            f.create_dataset(cap_id, data=features[cap_id].astype(np.float32), track_times=False)


def _write_features(feature_dir: Path, video_ids: list[str], frames: dict[str, np.ndarray]) -> None:
    """feature.bin / id.txt / shape.txt / video2frames.txt: frames of a video are contiguous rows."""
    feature_dir.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    video2frames: dict[str, list[str]] = {}
    with open(feature_dir / "feature.bin", "wb") as fh:
        for vid in video_ids:
            rows = frames[vid].astype(np.float32)
            fh.write(np.ascontiguousarray(rows).tobytes())
            names = [f"{vid}_{i}" for i in range(len(rows))]
            ids.extend(names)
            video2frames[vid] = names
    dim = next(iter(frames.values())).shape[1]
    _write_text(feature_dir / "id.txt", " ".join(ids) + "\n")
    _write_text(feature_dir / "shape.txt", f"{len(ids)} {dim}\n")
    _write_text(feature_dir / "video2frames.txt", repr(video2frames) + "\n")
