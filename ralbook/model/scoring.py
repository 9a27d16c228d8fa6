"""Similarity kernels shared by the backbones: the masked max-similarity over frames."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Elements per chunk in the masked max-similarity (bounds peak memory of the frame score).
MAX_SIM_CHUNK_ELEMENTS = 1 << 24


def _chunk_rows(a: Tensor, b: Tensor) -> int:
    """Queries per chunk so that one (chunk, Nv, Lq, Lf) similarity block stays under the budget."""
    return max(1, MAX_SIM_CHUNK_ELEMENTS // max(1, b.shape[0] * a.shape[1] * b.shape[1]))


def _chunked_max(a: Tensor, b: Tensor, with_index: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """max and argmax over b's rows of <a[q, t], b[v, f]>: two (Nq, Nv, Lq) tensors.

    Each chunk is one matrix product laid out (q, t, v, f), so the max runs over the contiguous
    last axis and no 4-D tensor is ever permuted or copied. Under autocast the products (and so
    the result) take the autocast dtype. ``with_index`` False skips the argmax (None in its
    place): ``amax`` is 2-3x faster than ``max`` over such short rows.
    """
    (nq, lq, d), (nv, lf, _) = a.shape, b.shape
    step = _chunk_rows(a, b)
    flat_b = b.reshape(nv * lf, d)
    values: list[Tensor] = []
    index: list[Tensor] = []
    for i in range(0, nq, step):
        chunk = a[i:i + step]
        sims = (chunk.reshape(-1, d) @ flat_b.t()).view(chunk.shape[0], lq, nv, lf)
        if with_index:
            v, k = sims.max(dim=-1)
            index.append(k)
        else:
            v = sims.amax(dim=-1)
        values.append(v)
    return torch.cat(values).transpose(1, 2), (torch.cat(index).transpose(1, 2) if with_index else None)


class _MaskedMaxSim(torch.autograd.Function):
    """Autograd for the chunked max: the backward pass needs only the argmax, not the 4-D tensor.

    The public code keeps several (Nq, Nv, Lq, Lf) tensors alive for autograd. Here the backward
    pass gathers the winning frame of each (query word, video) pair, so it costs Nq*Lq*Nv*d
    multiply-adds instead of the forward's Nq*Lq*Nv*Lf*d.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # a (Nq, Lq, d), b (Nv, Lf, d)
        values, index = _chunked_max(a, b)
        ctx.save_for_backward(a, b, index)
        return values

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, b, index = ctx.saved_tensors  # index (Nq, Nv, Lq): the winning frame of each max
        (nq, lq, d), nv = a.shape, b.shape[0]
        grad = grad.to(a.dtype)
        flat_a = a.reshape(nq * lq, d)
        grad_a, grad_b = torch.zeros_like(flat_a), torch.zeros_like(b)
        for v in range(nv):  # one video at a time: (Nq * Lq, d) temporaries, cache-sized
            won, g = index[:, v].reshape(-1), grad[:, v].reshape(-1, 1)
            grad_a.addcmul_(g, b[v].index_select(0, won))
            grad_b[v].index_add_(0, won, flat_a * g)
        return grad_a.view_as(a), grad_b


def _used_length(mask: Tensor) -> int:
    """1 + the last position that is valid in any row (at least 1)."""
    used = torch.nonzero(mask.any(dim=0))
    return int(used.max()) + 1 if used.numel() else 1


def masked_max_sim(a: Tensor, a_mask: Optional[Tensor], b: Tensor, b_mask: Tensor) -> Tensor:
    """(Nq, Nv, La): max over b's rows of m_a * m_b * <a, b>; a masked pair counts as similarity 0.

    Trailing positions that are padding in every row are cut before the products (sort videos by
    length to make this pay); the result is unchanged because a padded frame's similarity is
    exactly 0, so any video that has padding keeps 0 as a candidate of its max. ``a_mask`` None
    says that ``a`` is already exactly 0 at its padding (saves a copy of ``a``).
    """
    length_a = a.shape[1]
    has_padding = (b_mask == 0).any(dim=1)  # (Nv,)
    ka, kb = (length_a if a_mask is None else _used_length(a_mask)), _used_length(b_mask)
    a = a if a_mask is None else a[:, :ka] * a_mask[:, :ka].unsqueeze(-1).to(a.dtype)
    b = b[:, :kb] * b_mask[:, :kb].unsqueeze(-1).to(b.dtype)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        values = _MaskedMaxSim.apply(a, b)
    else:
        values = _chunked_max(a, b, with_index=False)[0]
    values = torch.where(has_padding[None, :, None], values.clamp(min=0), values)
    return F.pad(values, (0, length_a - ka))  # padded query words score 0


def _clip_similarities(queries: Tensor, clips: Tensor, normalized: bool) -> Tensor:
    """(Nq, Nv, Lc) similarity of each pooled query (Nq, d) with each clip token (Nv, Lc, d)."""
    if normalized:
        queries, clips = F.normalize(queries, dim=-1), F.normalize(clips, dim=-1)
    return torch.einsum("qd,vcd->qvc", queries, clips)


def max_over_clips(queries: Tensor, clips: Tensor, normalized: bool = True) -> tuple[Tensor, Tensor]:
    """Clip-scale score: for each (query, video) the best clip's similarity and its index, each (Nq, Nv).

    queries (Nq, d), clips (Nv, Lc, d); ``normalized``: cosine, else dot products.
    """
    return _clip_similarities(queries, clips, normalized).max(dim=-1)


def best_clip_score(queries: Tensor, clips: Tensor, normalized: bool = True) -> Tensor:
    """``max_over_clips(...).values``; without autograd it skips the argmax (``amax``, 2-3x faster).

    With autograd it keeps ``max``: its gradient goes to one clip of a tie, as in the public code,
    where ``amax`` would split it among repeated clip tokens (short videos repeat clips).
    """
    if torch.is_grad_enabled() and (queries.requires_grad or clips.requires_grad):
        return max_over_clips(queries, clips, normalized).values
    return _clip_similarities(queries, clips, normalized).amax(dim=-1)
