"""Data-parallel training: the global batch across ranks, wrapping the model, shared evaluation."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ralbook.model import ModelOutput, VideoEncoding, sample_proxies
from ralbook.retrieval.evaluate import EvalResult, encode_video_set, evaluate
from ralbook.retrieval.metrics import recall_metrics
from ralbook.runtime.process_group import all_gather, current_world, gather_encoding, gather_objects, share
from ralbook.runtime.workers import workers_for


@contextlib.contextmanager
def _own_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the global RNG seeded by ``seed``, and put the previous state back afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one rank's dropout masks at one step (distinct for every (step, rank))."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


class GlobalBatch(nn.Module):
    """The model's training forward over the global batch of all ranks; wrap it in DistributedDataParallel.

    ``forward(batch, seed)`` takes this rank's share (a collate_train batch with rank-local labels)
    and returns a ModelOutput for the whole global batch: scores (Nq, Nv), pooled queries, clips,
    global labels and MSRA proxies, identical on every rank.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any], seed: int) -> Any:

        m = self.model
        labels = batch["labels"].to(batch["clip_feats"].device)
        with _own_rng(seed, labels.device):  # dropout: this rank's own masks; the global RNG stays shared
            mine = m.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
            queries = m.encode_queries(batch["query_feats"], batch["query_mask"])
            dists = None
            if m.cfg.msra:
                text, video = m.text_distribution(queries, labels, len(mine)), m.video_distribution(mine)
                dists = torch.stack([text["mu"], text["log_sigma"], video["mu"], video["log_sigma"]], dim=1)
        videos = gather_encoding(mine)
        counts = all_gather(torch.tensor([len(mine)], device=labels.device))
        offset = int(counts[: dist.get_rank()].sum())
        rows = torch.stack([*m.score_encoded(queries, videos, normalized=True),
                            *m.score_encoded(queries, videos, normalized=False)], dim=-1)  # (nq, Nv, 4)
        clip, frame, clip_raw, frame_raw = all_gather(rows).unbind(-1)
        out = ModelOutput(clip, clip_raw, frame, frame_raw, all_gather(queries.pooled), videos.clips,
                          all_gather(labels + offset))
        if dists is not None:
            text_mu, text_log_sigma, video_mu, video_log_sigma = all_gather(dists).unbind(1)
            k = m.cfg.n_proxies  # text proxies first, then video proxies: the order of GMMFormerV2.forward
            out.text_proxies = sample_proxies(text_mu, text_log_sigma, k)
            out.video_proxies = sample_proxies(video_mu, video_log_sigma, k)
            out.text_log_sigma, out.video_log_sigma = text_log_sigma, video_log_sigma
        return out


def wrap_for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around GlobalBatch(model): gradients averaged over the ranks."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # some parameters get no gradient (e.g. the key bias of the GMM summary attention, or MSRA heads
    # when msra is off): find_unused_parameters leaves them as a single process would
    return DistributedDataParallel(GlobalBatch(model), device_ids=ids, find_unused_parameters=True)


def evaluate_shared(model: Any, collection: Any, split: str, cfg: Any, device: torch.device, *,
                    video_ids: Optional[list[str]] = None, cap_ids: Optional[list[str]] = None,
                    progress: bool = True, source: str = "the model") -> Any:
    """``ralbook.evaluate.evaluate`` with the work shared by the ranks; every rank gets the same result.
    ``source`` names the model in errors about non-finite numbers."""

    world = current_world()
    video_ids = list(video_ids) if video_ids is not None else collection.videos(split)
    cap_ids = list(cap_ids) if cap_ids is not None else [c for c, _ in collection.captions(split)]
    was_training = model.training
    model.eval()
    try:
        mine = video_ids[share(len(video_ids), world)]
        with torch.no_grad():
            if mine:
                part = encode_video_set(model, collection, mine, device, 64, workers_for(cfg.data.num_workers),
                                        cfg.train.amp, progress)
            else:
                d, m = cfg.model.hidden_size, cfg.model
                part = VideoEncoding(torch.zeros(0, m.n_clips, d, device=device),
                                     torch.zeros(0, m.max_frames, d, device=device),
                                     torch.zeros(0, m.max_frames, device=device))
            videos = gather_encoding(part)
        my_caps = cap_ids[share(len(cap_ids), world)]
        result = None
        if my_caps:
            result = evaluate(model, collection, split, cfg, device, video_ids=video_ids, cap_ids=my_caps,
                              videos=videos, progress=progress, source=source)
    finally:
        model.train(was_training)
    parts = [p for p in gather_objects(None if result is None else (result.ranks, result.topk)) if p is not None]
    ranks = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    top = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    return EvalResult({k: recall_metrics(r) for k, r in ranks.items()}, ranks, top, cap_ids, video_ids, split)
