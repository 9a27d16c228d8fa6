"""Two-stage retrieval over a stored index of encoded videos, for collections too large to score exhaustively.

``python -m ralbook index`` encodes every video of a split once and stores the encodings (clip
tokens, frame tokens, frame mask) as memory-mapped ``.npy`` arrays next to a small manifest
(model hash, configuration, video ids) and the model weights. Building writes one batch of videos
at a time, so it holds the same memory whatever the collection size.

Searching ranks every video by the clip-scale score first (an exact matrix product over the
stored clip tokens, read chunk by chunk), keeps the ``rerank`` best videos of each query and
computes the full fused score only for them. The final order is those K videos by fused score,
followed by every other video in first-stage order. A relevant video outside the first-stage top K
therefore keeps its first-stage rank, which is always worse than K: recall at cut-offs <= K
counts it as missed, and ``evaluate --index`` reports how often that happens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ralbook.checkpoint import (FORMAT_VERSION, MODEL_FORMAT, load_file, load_model_state, validate_ralbook,
                                with_content_hash)
from ralbook.files import save_atomic, write_json
from ralbook.config import Config
from ralbook.data.datasets import QueryDataset, VideoDataset, collate_queries, collate_videos
from ralbook.errors import RalbookError
from ralbook.model import QueryEncoding, VideoEncoding, build_model, masked_max_sim
from ralbook.retrieval.evaluate import EvalResult
from ralbook.retrieval.metrics import ranks_from_scores, recall_metrics, relevant_indices, top_indices
from ralbook.runtime.precision import autocast, resolve_amp
from ralbook.runtime.progress import steps
from ralbook.video.extract import encoder_settings


PathLike = Union[str, os.PathLike]
INDEX_FORMAT, INDEX_VERSION = "ralbook-index", 1
MANIFEST, MODEL_FILE = "manifest.json", "model.pt"
ARRAYS = ("clips", "frames", "mask")  # the fields of VideoEncoding, in order
ARRAYS_FILES = tuple(f"{name}.npy" for name in ARRAYS)
DTYPES = {"float32": np.float32, "float16": np.float16}


class IndexFolderError(RalbookError):
    """An index folder that is missing, incomplete, or built from another model."""


def model_hash(model: torch.nn.Module) -> str:
    """sha256 of the parameter and buffer names, shapes, dtypes and values (identifies the weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- building


def _index_model(path: Path) -> dict:
    """The index's model file, checked like any model checkpoint; files written before 0.2 (version 1, no
    content hash, no epoch) are read as they were."""
    obj = load_file(path)
    if isinstance(obj, dict) and obj.get("version") == 1 and "epoch" not in obj:
        return obj
    return validate_ralbook(obj, path, (MODEL_FORMAT,))


def _open_npy(path: Path, shape: tuple[int, ...], dtype: Any) -> Any:
    """A new .npy file of ``shape`` (its header written, the data still empty), opened for appending rows."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
    handle = path.open("r+b")
    handle.seek(0, os.SEEK_END)
    return handle


RUN_FILES = ("config.json", "best.pt", "last.pt", "metrics.jsonl")  # what marks a run directory


def check_index_target(out: Path, weights_hash: str, force: bool = False) -> None:
    """Refuse to write an index into a run directory, into a folder holding other files, or over an index
    built from other weights (``force`` allows all three); rebuilding an index of the same weights is fine."""
    if force or not out.exists():
        return
    if not out.is_dir():
        raise IndexFolderError(f"{out} is a file, not an index folder")
    run_files = [name for name in RUN_FILES if (out / name).exists()]
    if run_files:
        raise IndexFolderError(f"{out} is a run directory (it holds {', '.join(run_files)}): write the index to "
                               "another folder, e.g. RUN_DIR/index, or pass --force")
    if (out / MANIFEST).is_file():
        try:
            old = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("model_hash", "")
        except (ValueError, AttributeError):
            old = "unreadable"
        if old != weights_hash:
            raise IndexFolderError(f"{out} holds an index built from other weights (model hash {str(old)[:12]}, "
                                   f"this checkpoint's {weights_hash[:12]}): choose another --out, or --force to "
                                   "replace it")
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in (*ARRAYS_FILES, MODEL_FILE))
    if others:
        raise IndexFolderError(f"{out} is not empty and holds no index ({', '.join(others[:5])}): choose an empty "
                               "or new folder, or pass --force")


def build_index(model: Any, collection: Any, split: str, cfg: Any, out_dir: PathLike,
                device: Optional[torch.device] = None, batch_size: int = 64, dtype: str = "float32",
                video_ids: Optional[list[str]] = None, progress: bool = True, force: bool = False,
                provenance: Optional[dict[str, Any]] = None) -> Path:
    """Encode the videos of ``split`` into ``out_dir``; the manifest is written last (it marks a complete index).

    ``check_index_target`` guards ``out_dir`` unless ``force``; ``provenance`` (checkpoint path and hash) is
    stored in the manifest."""
    from torch.utils.data import DataLoader

    if dtype not in DTYPES:
        raise RalbookError(f"index dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    check_index_target(out, model_hash(model), force)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    device = device or next(model.parameters()).device
    ids = list(video_ids) if video_ids is not None else collection.videos(split)
    if not ids:
        raise RalbookError(f"split {split!r} of collection {cfg.data.collection!r} has no videos to index")
    m = cfg.model
    shapes = {"clips": (len(ids), m.n_clips, m.hidden_size), "frames": (len(ids), m.max_frames, m.hidden_size),
              "mask": (len(ids), m.max_frames)}
    files = {name: _open_npy(out / f"{name}.npy", shape, DTYPES[dtype]) for name, shape in shapes.items()}
    loader = DataLoader(VideoDataset(collection, ids), batch_size=batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=collate_videos)
    was_training = model.training
    model.eval()
    done = 0
    # "auto" is decided here and recorded: searches on any machine encode queries as the videos were encoded
    cfg = cfg.override(f"train.amp={resolve_amp(cfg.train.amp, torch.device(device))}")
    try:
        with torch.no_grad():
            for batch in steps(loader, "index videos", progress, unit="batches", leave=False):
                with autocast(device, cfg.train.amp):
                    enc = model.encode_videos(batch["clip_feats"].to(device), batch["frame_feats"].to(device),
                                              batch["frame_mask"].to(device))
                for name in ARRAYS:  # plain writes at the batch's place: memory holds one batch only
                    files[name].write(getattr(enc, name).float().cpu().numpy().astype(DTYPES[dtype]).tobytes())
                done += len(enc)
    finally:
        model.train(was_training)
        for f in files.values():
            f.close()
    if done != len(ids):
        raise RalbookError(f"indexing {out}: encoded {done} videos, expected {len(ids)}")
    # the model file is a ralbook model checkpoint (format, version, content hash), like a run's best.pt
    # (an index knows no epoch or validation metrics of the run: 0 and {})
    save_atomic(with_content_hash({"format": MODEL_FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(),
                                   "model": {k: v.cpu() for k, v in model.state_dict().items()},
                                   "epoch": 0, "val_metrics": {}}), out / MODEL_FILE)
    manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model_hash": model_hash(model),
                "config": cfg.to_dict(), "collection": cfg.data.collection, "split": split, "dtype": dtype,
                "n_videos": len(ids), "video_ids": ids, "shapes": {k: list(v) for k, v in shapes.items()},
                "encoder": encoder_settings(Path(cfg.data.data_root) / cfg.data.collection),  # search's text tower
                "provenance": dict(provenance or {})}
    write_json(out / MANIFEST, manifest)
    return out


# ----------------------------------------------------------------------------- searching


@dataclass
class SearchResult:
    """Top ``k`` videos of each query, best first."""

    indices: np.ndarray  # (Nq, k) positions in the index
    scores: np.ndarray   # (Nq, k) fused scores
    ids: list[list[str]]


class Index:
    """An index folder: memory-mapped encodings, the model that made them, and the video ids."""

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], model: Any):
        self.path, self.manifest, self.arrays, self.model = path, manifest, arrays, model
        self.video_ids: list[str] = list(manifest["video_ids"])
        # queries are encoded in the precision the videos were encoded in (ralbook.precision); scoring is fp32
        self.amp: str = manifest.get("config", {}).get("train", {}).get("amp", "none")

    @classmethod
    def open(cls, path: PathLike, model: Optional[Any] = None, device: Union[str, torch.device] = "cpu") -> "Index":
        """Open an index; ``model`` (default: the weights stored in it) must be the one that built it."""

        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise IndexFolderError(f"{path} is not a complete ralbook index: it holds no {MANIFEST} "
                              f"(build it with `python -m ralbook index`)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise IndexFolderError(f"{manifest_path} is not valid JSON: {err}") from err
        if manifest.get("format") != INDEX_FORMAT or manifest.get("version") != INDEX_VERSION:
            raise IndexFolderError(f"{manifest_path}: expected format {INDEX_FORMAT} version {INDEX_VERSION}, got "
                              f"{manifest.get('format')!r} version {manifest.get('version')!r}")
        arrays = {}
        for name in ARRAYS:
            array = np.load(path / f"{name}.npy", mmap_mode="r")
            if list(array.shape) != manifest["shapes"][name]:
                raise IndexFolderError(f"{path / (name + '.npy')}: shape {list(array.shape)}, the manifest says "
                                  f"{manifest['shapes'][name]}")
            arrays[name] = array
        if model is None:
            cfg = Config.from_dict(manifest["config"])
            model = build_model(cfg.model)
            load_model_state(model, _index_model(path / MODEL_FILE)["model"], path / MODEL_FILE)
        if model_hash(model) != manifest["model_hash"]:
            raise IndexFolderError(f"{path} was built with other model weights (hash {manifest['model_hash'][:12]}, "
                              f"this model {model_hash(model)[:12]}): rebuild the index with this checkpoint")
        return cls(path, manifest, arrays, model.to(device).eval())

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def videos(self, index: Union[slice, np.ndarray]) -> Any:
        """Some stored encodings as a float32 VideoEncoding on the model's device."""

        return VideoEncoding(*(torch.from_numpy(np.array(self.arrays[n][index], dtype=np.float32))
                               .to(self.device) for n in ARRAYS))

    def encode_queries(self, query_features: Tensor, query_mask: Tensor, chunk: int = 256) -> Any:
        """The model's query encodings (float32, computed in the index's precision), ``chunk`` queries at
        a time: measured 1.5-1.9x faster than one product of 4,096 queries on a 2-core CPU (the
        activations of a small chunk stay in cache)."""

        features, mask = query_features.to(self.device).float(), query_mask.to(self.device)
        parts = []
        with torch.no_grad(), autocast(self.device, self.amp):
            for start in range(0, max(1, len(features)), chunk):
                part = self.model.encode_queries(features[start:start + chunk], mask[start:start + chunk])
                pad = mask.shape[1] - part.words.shape[1]  # every chunk to the batch's word length
                parts.append(QueryEncoding(part.pooled.float(), F.pad(part.words.float(), (0, 0, 0, pad)),
                                           F.pad(part.mask, (0, pad))))
        return QueryEncoding(*(torch.cat([getattr(p, name) for p in parts]) for name in ("pooled", "words", "mask")))

    def first_stage(self, queries: Any, video_chunk: int = 1000) -> Tensor:
        """(Nq, Nv) clip-scale scores, exact, reading the stored clip tokens ``video_chunk`` videos at a time."""

        rows = []
        with torch.no_grad():
            for start in range(0, len(self), video_chunk):
                clips = torch.from_numpy(np.array(self.arrays["clips"][start:start + video_chunk],
                                                              dtype=np.float32)).to(self.device)
                empty = clips.new_zeros(clips.shape[0], 0)  # the clip score reads the clip tokens only
                rows.append(self.model.clip_scores(queries, VideoEncoding(clips, empty, empty)))
        return torch.cat(rows, dim=1)

    def rerank(self, queries: Any, candidates: Tensor, video_block: int = 16, row_block: int = 4096,
               dense_share: float = 0.5) -> Tensor:
        """Frame scores (Nq, K) of each query against its own K candidate videos (any per-query sets).

        Why this layout: a few videos are candidates of most queries (hubs), most are candidates of
        few. A video picked by at least ``dense_share`` of the queries is scored against every
        query, ``video_block`` such videos per product, as exhaustive scoring does (sorted by length:
        a product pads each video to the longest of its block, so small blocks waste little); every other
        video is scored against exactly the queries that picked it, in one product of their word
        tokens (no word padding) with its frames. ``row_block`` queries at most go into one product.
        """
        n, k = candidates.shape
        flat = candidates.reshape(-1).cpu()
        owners = torch.arange(n).repeat_interleave(k)
        order = torch.argsort(flat * n + owners)  # pairs by video, then by query
        videos, counts = torch.unique_consecutive(flat[order], return_counts=True)
        owners, ends = owners[order], counts.cumsum(0)
        frame = torch.empty(n * k)
        dense = counts >= dense_share * n
        with torch.no_grad():
            scorer = _frame_scorer(self.model, queries)
            hubs = videos[dense]
            if len(hubs):
                hubs = hubs[torch.argsort(torch.from_numpy(np.asarray(self.arrays["mask"][hubs.numpy()]).sum(axis=1)),
                                          stable=True)]  # by length: each block cuts its frame padding
                table = torch.empty(n, len(hubs))
                for b in range(0, len(hubs), video_block):
                    block = scorer.prepare(self.videos(hubs[b:b + video_block].numpy()))
                    for start in range(0, n, row_block):
                        rows = torch.arange(start, min(n, start + row_block))
                        table[rows, b:b + len(block)] = scorer.score(rows.to(self.device), block).float().cpu()
                column = torch.full((len(self),), -1, dtype=torch.long)
                column[hubs] = torch.arange(len(hubs))
                picked = column[flat[order]] >= 0
                frame[order[picked]] = table[owners[picked], column[flat[order][picked]]]
            sparse = torch.nonzero(~dense).flatten()
            for b in range(0, len(sparse), video_block):
                chosen = sparse[b:b + video_block]
                block = scorer.prepare(self.videos(videos[chosen].numpy()))
                for j, i in enumerate(chosen.tolist()):
                    video, end = block.select(slice(j, j + 1)), int(ends[i])
                    for start in range(end - int(counts[i]), end, row_block):
                        stop = min(end, start + row_block)
                        rows = owners[start:stop].to(self.device)
                        frame[order[start:stop]] = scorer.score_one(rows, video).float().cpu()
        return frame.view(n, k)

    def two_stage(self, queries: Any, rerank: int) -> dict[str, Tensor]:
        """First-stage scores (Nq, Nv), candidates (Nq, K) sorted by video index, their clip/frame/fused scores."""

        # Both stages score in fp32 whatever the index's precision. The first stage must: bf16 scores tie
        # often, and the K best must be chosen with the ranks' tie rule (video order) for every relevant
        # video outside them to rank below K. The second stage was faster in fp32: on a CPU with AMX 3.4-3.5 s
        # against 3.8-4.8 s under bf16 autocast for 4,096 queries at K = 200.
        first = self.first_stage(queries).float().cpu()
        k = max(1, min(rerank, len(self)))
        candidates = torch.sort(top_indices(first, k), dim=1).values  # stable: ties in video order, as the ranks
        clip = first.gather(1, candidates)  # the first stage's exact clip scores
        frame = self.rerank(queries, candidates)
        return {"first": first, "candidates": candidates, "clip": clip, "frame": frame,
                "fused": self.model.fuse(clip, frame)}

    def search(self, query_features: Tensor, query_mask: Tensor, k: int = 10, rerank: int = 100) -> SearchResult:
        """The ``k`` best videos of each query: clip-scale first stage, fused score for the top ``rerank``."""
        stages = self.two_stage(self.encode_queries(query_features, query_mask), max(rerank, k))
        k = min(k, stages["candidates"].shape[1])
        order = torch.sort(stages["fused"], dim=1, descending=True, stable=True).indices[:, :k]
        indices = stages["candidates"].gather(1, order).numpy()
        return SearchResult(indices, stages["fused"].gather(1, order).numpy(),
                            [[self.video_ids[j] for j in row] for row in indices])


class _ModelScorer:
    """Frame scores through the model's own ``frame_scores`` (backbones without a word-confidence score)."""

    def __init__(self, model: Any, queries: Any):
        self.model, self.queries = model, queries

    def prepare(self, videos: Any) -> Any:
        return videos

    def score(self, rows: Tensor, videos: Any) -> Tensor:
        """(len(rows), len(videos)) frame scores."""
        return self.model.frame_scores(self.queries.select(rows), videos)

    def score_one(self, rows: Tensor, video: Any) -> Tensor:
        """(len(rows),) frame scores against one video."""
        return self.score(rows, video)[:, 0]


class _PackedWordScorer:
    """RAL's frame score, sum_t g_t max_f cos(word_t, frame_f), over packed word tokens.

    The word weights g depend on the query alone, so the normalised words and their weights are
    computed once. Only valid words are kept, one (T, d) matrix for all queries: a product for
    some queries takes exactly their tokens (queries of 3 and 30 words cost 3 and 30 rows, not
    30 each), and the per-word maxima are summed back into their queries.
    """

    def __init__(self, model: Any, queries: Any):
        words = F.normalize(queries.words, dim=-1)
        valid = queries.mask != 0
        self.tokens = words[valid]  # (T, d), query after query
        self.weights = model._word_weights(words, queries.mask)[valid]  # (T,)
        self.lengths = valid.sum(dim=1)
        self.starts = self.lengths.cumsum(0) - self.lengths

    def prepare(self, videos: Any) -> Any:
        """Videos with unit-length frames (done once per block, not once per product)."""
        return dataclasses.replace(videos, frames=F.normalize(videos.frames, dim=-1))

    def _tokens_of(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(positions in ``tokens`` of the rows' words, row of each word 0..len(rows)-1)."""
        lengths = self.lengths[rows]
        segment = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
        offsets = (lengths.cumsum(0) - lengths)[segment]
        return self.starts[rows][segment] + torch.arange(len(segment), device=rows.device) - offsets, segment

    def score(self, rows: Tensor, videos: Any) -> Tensor:
        """(len(rows), len(videos)) frame scores of some queries against prepared videos."""
        tokens, segment = self._tokens_of(rows)
        if not len(tokens):  # no valid word in any of these queries
            return self.weights.new_zeros(len(rows), len(videos))
        sims = masked_max_sim(self.tokens.index_select(0, tokens).unsqueeze(1), None, videos.frames, videos.mask)
        weighted = sims[:, :, 0] * self.weights[tokens].unsqueeze(1)  # (T_rows, Nv)
        return weighted.new_zeros(len(rows), weighted.shape[1]).index_add_(0, segment, weighted)

    def score_one(self, rows: Tensor, video: Any) -> Tensor:
        """(len(rows),) frame scores against one prepared video: ``score`` without its batching
        machinery, since one video's similarities (words x its frames) are small."""
        valid = video.mask[0] != 0
        frames = video.frames[0, valid]
        tokens, segment = self._tokens_of(rows)
        if not len(frames):  # no valid frame: every similarity is a padded one, 0
            return frames.new_zeros(len(rows))
        best = (self.tokens.index_select(0, tokens) @ frames.t()).amax(dim=1)
        if not bool(valid.all()):
            best = best.clamp(min=0)  # a padded frame counts as similarity 0 (see masked_max_sim)
        return best.new_zeros(len(rows)).index_add_(0, segment, best * self.weights[tokens])


def _frame_scorer(model: Any, queries: Any) -> Any:
    """The packed scorer for models with RAL's word-confidence frame score, else the model's own."""
    if getattr(model.cfg, "csa", False) and hasattr(model, "_word_weights"):
        return _PackedWordScorer(model, queries)
    return _ModelScorer(model, queries)


# ----------------------------------------------------------------------------- evaluation


def two_stage_ranks(stages: dict[str, Tensor], relevant: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Ranks per score kind and whether a relevant video was among the candidates, for two_stage output.

    clip: the exact first-stage rank. frame and fused: a relevant candidate's rank among the K
    candidates; a relevant video outside them keeps its first-stage rank (> K). Best relevant video wins.
    """

    first, candidates = stages["first"], stages["candidates"]
    n, nv = first.shape
    found = torch.zeros(n, dtype=torch.bool)
    best = {kind: torch.full((n,), nv + 1, dtype=torch.long) for kind in ("clip", "frame", "fused")}
    for r in range(relevant.shape[1]):
        target = relevant[:, r:r + 1]
        hit = candidates == target
        inside = hit.any(dim=1) & (target[:, 0] >= 0)
        position = torch.where(inside, hit.float().argmax(dim=1), torch.full((n,), -1)).unsqueeze(1)
        first_rank = ranks_from_scores(first, target)  # the (Nq, Nv) work, once per column for all kinds
        best["clip"] = torch.minimum(best["clip"], first_rank)
        for kind in ("frame", "fused"):
            best[kind] = torch.minimum(best[kind], torch.where(inside, ranks_from_scores(stages[kind], position),
                                                               first_rank))
        found |= inside
    return best, found


def evaluate_index(index: Index, collection: Any, split: str, rerank: int, query_chunk: int = 4096,
                   relevant: Optional[dict[str, list[str]]] = None, progress: bool = True) -> tuple[Any, int]:
    """(EvalResult, number of queries with no relevant video among the first-stage top ``rerank``)."""
    from torch.utils.data import DataLoader

    cap_ids = [c for c, _ in collection.captions(split)]
    loader = DataLoader(QueryDataset(collection, cap_ids), batch_size=query_chunk, shuffle=False,
                        collate_fn=collate_queries)
    ranks: dict[str, list[Tensor]] = {"clip": [], "frame": [], "fused": []}
    tops, missed = [], 0
    for batch in steps(loader, f"two-stage {split}", progress, unit="batches", leave=False):
        rel = relevant_indices(batch["cap_ids"], batch["video_ids"], index.video_ids, relevant)
        stages = index.two_stage(index.encode_queries(batch["query_feats"], batch["query_mask"]), rerank)
        chunk, found = two_stage_ranks(stages, rel)
        missed += int((~found).sum())
        for kind in ranks:
            ranks[kind].append(chunk[kind])
        order = torch.sort(stages["fused"], dim=1, descending=True, stable=True).indices[:, :10]
        tops.append(stages["candidates"].gather(1, order))
    arrays = {k: torch.cat(v).numpy() for k, v in ranks.items()}
    top = torch.cat(tops).numpy()
    result = EvalResult({k: recall_metrics(r) for k, r in arrays.items()}, arrays,
                        {"clip": top, "frame": top, "fused": top}, cap_ids, index.video_ids, split)
    return result, missed


# ----------------------------------------------------------------------------- command line


__all__ = ["Index", "SearchResult", "build_index", "evaluate_index", "model_hash", "two_stage_ranks"]
