"""Data-parallel training and shared evaluation on torch.distributed (processes started by ``torchrun``).

One training step over a *global* batch of B videos, split among W ranks:

* each rank reads its contiguous share of the batch's videos (with their queries) and runs the
  encoders on it (the expensive, per-item part);
* the video encodings are gathered, with gradients, so every rank scores *its* queries against
  *all* B videos; the score rows, pooled queries and MSRA distributions are gathered too, so that
  every loss that compares items across the batch (NCE, triplets with their hard negatives, query
  diversity, OT, proxy matching, distribution alignment) sees the whole global batch;
* every rank then computes the same total loss. The gather's backward sums the gradient that all
  ranks send to a rank's items, so each rank's parameter gradient is W times its items' share of
  the single-process gradient; DistributedDataParallel averages over the W ranks, which gives the
  single-process gradient exactly (``tests/test_distributed.py`` checks it to 1e-5).

Randomness: dropout masks of a rank's encoders come from a seed of (run seed, step, rank); the
draws that concern the whole batch (MSRA proxies, triplet negatives) come from the global RNG,
which stays identical on every rank. Without dropout a run is therefore the single-process run up
to float rounding; with dropout it is an equally valid run with other masks.

Evaluation: each rank encodes its share of the videos and scores its share of the queries; the
ranks are gathered and every rank computes the same metrics.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ralbook.errors import RalbookError
from ralbook.workers import workers_for

DEFAULT_TIMEOUT_S = 300.0  # a collective (or the start) that waits longer than this ends the run with an error


@dataclass(frozen=True)
class World:
    """This process's place among the ranks; size 1 = an ordinary single-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The world of the initialised default process group, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def launched_by_torchrun() -> bool:
    """True when the environment names several ranks (torchrun sets WORLD_SIZE, RANK, MASTER_ADDR...)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group described by torchrun's environment variables (gloo on CPU, nccl on CUDA).

    ``timeout_s`` bounds the start and every later collective: a rank that died or hangs makes the
    others fail with an error instead of waiting forever.
    """
    if not launched_by_torchrun():
        return World()
    if dist.is_initialized():
        return current_world()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RalbookError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: start "
                           "distributed runs with torchrun (see the README)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:  # DistError and store timeouts are RuntimeErrors
        raise RalbookError(f"rank {os.environ['RANK']}: could not join the {os.environ['WORLD_SIZE']} ranks at "
                           f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:.0f} s "
                           f"({' '.join(str(err).split())[:80]})") from err
    return current_world()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_communication_error(err: BaseException) -> bool:
    """True for the errors of a collective whose peer died or stalled (as opposed to bugs)."""
    text = str(err)
    return isinstance(err, dist.DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out"))


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each rank of a CUDA run uses the GPU of its local rank."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def barrier() -> None:
    if current_world().distributed:
        dist.barrier()


# ----------------------------------------------------------------------------- shares


def share(n: int, world: World) -> slice:
    """This rank's contiguous part of ``n`` items (the first ``n % W`` ranks get one more)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def check_batches(n_items: int, batch_size: int, world: World) -> None:
    """Every batch must give every rank at least one video (a short last batch may not)."""
    last = n_items % batch_size or batch_size
    smallest = min(batch_size, n_items, last)
    if smallest < world.size:
        raise RalbookError(f"a batch of {smallest} video(s) cannot be shared by {world.size} ranks "
                           f"({n_items} training videos, batch size {batch_size}): choose a batch size whose "
                           f"last batch holds >= {world.size} videos, or fewer ranks")


def describe(world: World, batch_size: int) -> str:
    """The start line of a distributed run."""
    low, high = batch_size // world.size, -(-batch_size // world.size)
    each = f"{low}" if low == high else f"{low}-{high}"
    return (f"distributed: {world.size} ranks, backend {world.backend}, {each} of the {batch_size} videos of each "
            f"global batch per rank")


# ----------------------------------------------------------------------------- gathering


def _pad_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    pads: list[int] = []
    for have, want in zip(reversed(x.shape), reversed(shape)):
        pads += [0, want - have]
    return torch.nn.functional.pad(x, pads) if any(pads) else x


def _gather_padded(x: Tensor, group: Any = None) -> tuple[Tensor, list[list[int]]]:
    """All ranks' ``x`` concatenated along dim 0 in rank order, other dims zero padded to their maximum."""
    world = dist.get_world_size(group)
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    sizes = [s.tolist() for s in shapes]
    full = [max(s[d] for s in sizes) for d in range(x.dim())]
    padded = _pad_to(x, full).contiguous()
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded, group=group)
    return torch.cat([p[: s[0]] for p, s in zip(pieces, sizes)]), sizes


class _GatherWithGrad(torch.autograd.Function):
    """all-gather whose backward hands each rank the *sum* over ranks of the gradient of its rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        out, sizes = _gather_padded(x, group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, dist.get_rank(group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        start = sum(s[0] for s in ctx.sizes[: ctx.rank])
        mine = ctx.sizes[ctx.rank]
        rows = total[start:start + mine[0]]
        return rows[(slice(None),) + tuple(slice(0, n) for n in mine[1:])], None


_GATHER_GROUP: Any = None


def _gather_group() -> Any:
    """A second process group for the gathers, so that they never interleave with DDP's own all-reduces."""
    global _GATHER_GROUP
    if _GATHER_GROUP is None:
        _GATHER_GROUP = dist.new_group(backend=dist.get_backend())
    return _GATHER_GROUP


def all_gather(x: Tensor) -> Tensor:
    """Every rank's ``x`` along dim 0, in rank order; keeps gradients (see _GatherWithGrad)."""
    if not current_world().distributed:
        return x
    if x.requires_grad:
        return _GatherWithGrad.apply(x, _gather_group())
    return _gather_padded(x, _gather_group())[0]


def gather_encoding(encoding: Any) -> Any:
    """An encoding dataclass (VideoEncoding, QueryEncoding) with every field gathered over the ranks."""
    return type(encoding)(*(all_gather(getattr(encoding, f.name)) for f in dataclasses.fields(encoding)))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- the training forward


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
        from ralbook.model import ModelOutput, sample_proxies

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
            k = m.cfg.n_proxies  # text proxies first, then video proxies: the order of RALModel.forward
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


# ----------------------------------------------------------------------------- shared evaluation


def evaluate_shared(model: Any, collection: Any, split: str, cfg: Any, device: torch.device, *,
                    video_ids: Optional[list[str]] = None, cap_ids: Optional[list[str]] = None,
                    progress: bool = True, source: str = "the model") -> Any:
    """``ralbook.evaluate.evaluate`` with the work shared by the ranks; every rank gets the same result.
    ``source`` names the model in errors about non-finite numbers."""
    from ralbook.evaluate import EvalResult, encode_video_set, evaluate, recall_metrics
    from ralbook.model import VideoEncoding

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
