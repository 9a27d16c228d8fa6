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

import dataclasses
import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ralbook.errors import RalbookError


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


# ----------------------------------------------------------------------------- shared evaluation
