"""Datasets over a Collection and the collate functions that pad them into batches."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from ralbook.data.collection import Collection, video_of


class VideoDataset(Dataset):
    """One item per video: its clip and frame inputs (docs/method.md#inputs)."""

    def __init__(self, collection: Collection, video_ids: Iterable[str]):
        self.collection, self.video_ids = collection, list(video_ids)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.video_ids[index]
        clip, frames = self.collection.video_arrays(video)
        return {"video_id": video, "clip_feats": torch.from_numpy(clip), "frame_feats": torch.from_numpy(frames),
                "max_frames": self.collection.max_frames}


class TrainDataset(VideoDataset):
    """One item per video with ALL its captions of ``split`` (the batch's queries are grouped by video)."""

    def __init__(self, collection: Collection, video_ids: Iterable[str], split: str = "train"):
        super().__init__(collection, video_ids)
        self.split = split
        self.cap_ids = [collection.captions_of(v, split) for v in self.video_ids]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item["cap_ids"] = list(self.cap_ids[index])
        item["query_feats"] = [torch.from_numpy(self.collection.query_array(c)) for c in item["cap_ids"]]
        return item


class QueryDataset(Dataset):
    """One item per caption: its query input and its ground-truth video id."""

    def __init__(self, collection: Collection, cap_ids: Iterable[str]):
        self.collection, self.cap_ids = collection, list(cap_ids)

    def __len__(self) -> int:
        return len(self.cap_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        cap = self.cap_ids[index]
        return {"cap_id": cap, "video_id": video_of(cap),
                "query_feats": torch.from_numpy(self.collection.query_array(cap))}


def _pad(seqs: Sequence[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (n_i, D) rows to (B, length, D) with a float 0/1 mask (B, length)."""
    out = torch.zeros(len(seqs), length, seqs[0].shape[-1], dtype=torch.float32)
    mask = torch.zeros(len(seqs), length, dtype=torch.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = 1.0
    return out, mask


def collate_videos(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """clip_feats (B, 32, Dv), frame_feats (B, 128, Dv) zero padded to max_frames always, frame_mask (B, 128)."""
    frames = [it["frame_feats"] for it in items]
    length = max([it["max_frames"] for it in items] + [len(f) for f in frames])
    frame_feats, frame_mask = _pad(frames, length)
    return {"clip_feats": torch.stack([it["clip_feats"] for it in items]).float(), "frame_feats": frame_feats,
            "frame_mask": frame_mask, "video_ids": [it["video_id"] for it in items]}


def collate_queries(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """query_feats (Nq, Lq, Dt) zero padded to the longest query, query_mask (Nq, Lq), ids."""
    feats, mask = _pad([it["query_feats"] for it in items], max(len(it["query_feats"]) for it in items))
    return {"query_feats": feats, "query_mask": mask, "cap_ids": [it["cap_id"] for it in items],
            "video_ids": [it["video_id"] for it in items]}


def collate_train(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Videos plus all their queries; ``labels[i]`` = batch index of query i's video (contiguous per video)."""
    batch = collate_videos(items)
    queries = [q for it in items for q in it["query_feats"]]
    batch["query_feats"], batch["query_mask"] = _pad(queries, max(len(q) for q in queries))
    batch["labels"] = torch.tensor([b for b, it in enumerate(items) for _ in it["cap_ids"]], dtype=torch.long)
    batch["cap_ids"] = [c for it in items for c in it["cap_ids"]]
    return batch


def batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]
