"""GMMFormer v2 backbone + RAL (CSA and MSRA), in one file whose order follows
docs/method.md (sections building blocks to MSRA).

Shapes: ``Nq`` queries, ``Nv`` videos, ``Lq`` query tokens, ``Lc`` clips (32), ``Lf`` frames (128),
``d`` hidden size, ``K`` proxies. Masks are float 0/1 tensors, 1 = valid.

Deliberate differences from the authors' public code (docs/method.md#deliberate-differences-from-the-public-code), each one marked where it happens:

* MSRA attention pooling masks padding (frames, query tokens, the support set), so the learned
  distributions do not depend on how much padding a batch happens to carry.
* Frames shorter than ``max_frames`` are padded inside together with their mask.
* Nothing is tied to CUDA; the Gaussian windows are computed once as non-persistent buffers.
* Inputs the public code crashes on work: a single query, every video with one query, a video with
  more than 26 queries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from ralbook.config import ModelConfig

# Widths of the eight parallel branches of a GMM block; None = plain attention (GMMFormer v2 order).
GMM_WIDTHS: tuple[Optional[float], ...] = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)
# Elements per chunk in the masked max-similarity (bounds peak memory of the frame score).
MAX_SIM_CHUNK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------- building blocks

class _CPUDropout(torch.autograd.Function):
    """Dropout whose random mask comes from 15-bit slices of 64-bit random numbers (4 per draw).

    torch's CPU ``bernoulli_`` draws one random number per element and took ~20% of a CPU training
    step; this draws a quarter as many. The drop probability is rounded to a multiple of 2**-15
    (0.2 -> 0.20001) and the scale is the inverse of the actual keep probability, so E[out] = x.
    With ``relu`` the ReLU before the dropout is folded into the same mask. The backward pass
    keeps only that boolean mask (not the ReLU output as well).
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: float, relu: bool) -> Tensor:
        cut = round(p * 32768)
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        keep = draws.view(torch.int16)[:n].view(x.shape).bitwise_and(0x7FFF) >= cut
        if relu:
            keep &= x > 0
        ctx.scale = 32768 / (32768 - cut)
        ctx.save_for_backward(keep)
        return x * keep.to(x.dtype).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep.to(grad.dtype).mul_(ctx.scale), None, None


class Dropout(nn.Module):
    """nn.Dropout, with a faster mask on the CPU (see _CPUDropout); other devices use torch's kernel.

    ``forward(x, relu=True)`` is dropout(relu(x)), fused on the CPU.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if not self.training or self.p == 0.0:
            return F.relu(x) if relu else x
        if x.device.type != "cpu" or not 0 < round(self.p * 32768) < 32768:  # GPUs; p within 2**-16 of 0 or 1
            return F.dropout(F.relu(x) if relu else x, self.p, training=True)
        return _CPUDropout.apply(x, self.p, relu)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LinearLayer(nn.Module):
    """LayerNorm -> Dropout -> Linear -> ReLU: projects input features to the hidden size."""

    def __init__(self, d_in: int, d_out: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.dropout = Dropout(dropout)
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.linear(self.dropout(self.norm(x))))


class PositionalEncoding(nn.Module):
    """x + E[position] -> LayerNorm -> Dropout, with a learned table of ``max_len`` rows."""

    def __init__(self, max_len: int, d: int, dropout: float):
        super().__init__()
        self.table = nn.Embedding(max_len, d)
        self.norm = nn.LayerNorm(d)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        """x (B, L, d), or packed rows (N, d) with their ``positions`` (N,)."""
        # F.embedding, not weight[positions]: with repeated positions the indexing backward adds rows with
        # atomics in parallel on CPU (bits vary run to run); the embedding backward has a fixed order
        table = self.table.weight[: x.shape[1]] if positions is None else F.embedding(positions, self.table.weight)
        return self.dropout(self.norm(x + table))


@dataclass
class Packing:
    """The valid rows of a (B, L) mask, so that position-wise layers skip padding.

    Exact, not an approximation: padded keys get zero attention weight anyway (their logit is
    -10000 below the rest), and the outputs at padded positions are discarded.
    """

    index: Tensor           # (N,) flat positions of the valid rows in B * L
    shape: tuple[int, int]  # (B, L)

    @classmethod
    def from_mask(cls, mask: Tensor) -> "Packing":
        return cls(torch.nonzero(mask.reshape(-1) > 0).squeeze(1), (mask.shape[0], mask.shape[1]))

    @property
    def positions(self) -> Tensor:
        return self.index % self.shape[1]

    def pack(self, x: Tensor) -> Tensor:  # (B, L, ...) -> (N, ...)
        return x.reshape(-1, *x.shape[2:])[self.index]

    def unpack(self, x: Tensor) -> Tensor:  # (N, ...) -> (B, L, ...), zeros at padding
        out = x.new_zeros(self.shape[0] * self.shape[1], *x.shape[1:])
        # index_put, not index_copy: its backward keeps only the index, not a copy of x
        return out.index_put((self.index,), x).view(*self.shape, *x.shape[1:])


def gaussian_window(length: int, width: float) -> Tensor:
    """(L, L) multiplicative attention window of GMMFormer: row i peaks at key i / L, rows max-normalised."""
    centre = torch.arange(length, dtype=torch.float64).unsqueeze(1) / length
    position = torch.linspace(0, 1, length, dtype=torch.float64).unsqueeze(0)
    s = max(width, 0.01) / 9
    # the Gaussian density N(position; centre, s) divided by its row maximum, computed in log space
    # (the density itself underflows to a row of zeros for narrow windows at short lengths)
    log_density = -((position - centre) ** 2) / (2 * s**2)
    return (log_density - log_density.max(dim=-1, keepdim=True).values).exp().float()


class Attention(nn.Module):
    """Multi-head attention with optional Gaussian window; no output projection (as GMMFormer)."""

    def __init__(self, d: int, n_heads: int, dropout: float, window: Optional[Tensor] = None):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"hidden_size {d} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dropout = Dropout(dropout)
        self.register_buffer("window", window, persistent=False)

    def _heads(self, x: Tensor) -> Tensor:  # (B, L, d) -> (B, h, L, dh)
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: Tensor, keys: Tensor, key_mask: Optional[Tensor] = None,
                packing: Optional[Packing] = None) -> Tensor:
        q, k, v = self.q(query), self.k(keys), self.v(keys)
        if packing is not None:  # the projections ran on valid rows only; attention needs (B, L, d)
            q, k, v = packing.unpack(q), packing.unpack(k), packing.unpack(v)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, h, Lq, Lk)
        if self.window is not None:
            scores = scores * self.window  # shrinks distant logits towards 0 (not a log-bias)
        if key_mask is not None:
            scores = scores + (1.0 - key_mask[:, None, None, :]) * -10000.0
        context = self.dropout(scores.softmax(dim=-1)) @ v
        context = context.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        return context if packing is None else packing.pack(context)

    def single_query(self, token: Tensor, keys: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        """forward(token.expand(B, 1, d), keys, key_mask)[:, 0] for one query token shared by all B key sets.

        The keys are never projected: q . (W_k x + b_k) = (W_k^T q) . x + q . b_k, where q . b_k is the
        same for every key and cancels in the softmax (so b_k gets no gradient, in the public code's
        arithmetic too), and sum_l p_l (W_v x_l + b_v) = W_v (sum_l p_l x_l) + b_v sum_l p_l.
        token (d,), keys (B, L, d), key_mask (B, L) -> (B, d).
        """
        if self.window is not None:
            raise ValueError("single_query does not support a Gaussian window")
        h, dh, d = self.n_heads, self.head_dim, keys.shape[-1]
        q = self.q(token).view(h, dh) / math.sqrt(dh)
        folded = torch.einsum("he,hed->hd", q, self.k.weight.view(h, dh, d))  # (h, d)
        scores = (keys @ folded.t()).transpose(1, 2)  # (B, h, L)
        if key_mask is not None:
            scores = scores + (1.0 - key_mask[:, None, :]) * -10000.0
        probs = self.dropout(scores.softmax(dim=-1))
        pooled = probs @ keys  # (B, h, d)
        context = torch.einsum("bhd,hed->bhe", pooled, self.v.weight.view(h, dh, d))
        context = context + self.v.bias.view(h, dh) * probs.sum(dim=-1, keepdim=True)
        return context.reshape(keys.shape[0], d)


class FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int, dropout: float):
        super().__init__()
        self.up, self.down, self.dropout = nn.Linear(d, d_ff), nn.Linear(d_ff, d), Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(self.up(x), relu=True))


class TransformerLayer(nn.Module):
    """Post-norm layer ("BertAttention"): attention, residual, LayerNorm, FFN, residual, LayerNorm."""

    def __init__(self, d: int, n_heads: int, dropout: float, ffn_mult: int = 4, window: Optional[Tensor] = None):
        super().__init__()
        self.attn = Attention(d, n_heads, dropout, window)
        self.ffn = FeedForward(d, ffn_mult * d, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, keys: Optional[Tensor] = None,
                packing: Optional[Packing] = None) -> Tensor:
        """x (B, L, d), or packed valid rows (N, d) with their ``packing``."""
        keys = x if keys is None else keys
        return self._residuals(x, self.attn(x, keys, mask, packing))

    def summarise(self, token: Tensor, keys: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        """forward(token.expand(B, 1, d), key_mask, keys)[:, 0]: one shared query token over B key sets -> (B, d)."""
        context = self.attn.single_query(token.reshape(-1), keys, key_mask)
        return self._residuals(token.reshape(1, -1).expand_as(context), context)

    def _residuals(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout1(context))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class GMMBlock(nn.Module):
    """Dynamic GMM block: eight windowed attention branches mixed per position by learned weights.

    A shared learned token summarises each branch by cross-attention; the summaries give
    per-position logits over the branches (softmax with temperature ``sft_factor``).
    """

    def __init__(self, length: int, d: int, n_heads: int, dropout: float, sft_factor: float,
                 checkpoint: bool = False):
        super().__init__()
        self.checkpoint = checkpoint
        self.branches = nn.ModuleList(
            TransformerLayer(d, n_heads, dropout, window=None if w is None else gaussian_window(length, w))
            for w in GMM_WIDTHS
        )
        self.summary = TransformerLayer(d, n_heads, dropout, ffn_mult=1)
        self.gate = nn.Sequential(nn.Linear(d, d), nn.ReLU(), Dropout(dropout), nn.Linear(d, length))
        self.sft_factor = sft_factor

    def forward(self, x: Tensor, mask: Optional[Tensor], token: Tensor, packing: Optional[Packing] = None) -> Tensor:
        """x (B, L, d), or its valid rows (N, d) with ``packing``; returns (B, L, d), zeros at padding."""
        if self.checkpoint and torch.is_grad_enabled():  # keep only branch inputs/outputs for backward
            run = [torch.utils.checkpoint.checkpoint(branch, x, mask, None, packing, use_reentrant=False)
                   for branch in self.branches]
        else:
            run = [branch(x, mask, packing=packing) for branch in self.branches]
        if packing is not None:
            run = [packing.unpack(out) for out in run]
        outs = torch.stack(run, dim=1)  # (B, 8, L, d)
        b, n, length, d = outs.shape
        # the shared token summarises each (video, branch) by cross-attention: a batch of B * 8 key sets
        flat_mask = None if mask is None else mask.repeat_interleave(n, dim=0)
        summaries = self.summary.summarise(token, outs.view(b * n, length, d), flat_mask).view(b, n, d)
        weights = (self.gate(summaries) / self.sft_factor).softmax(dim=1)  # (B, 8, L): softmax over branches
        return (outs * weights.unsqueeze(-1)).sum(dim=1)


class AttentionPool(nn.Module):
    """a = softmax_tokens(w2 tanh(w1 x)); returns (sum a x, a). Padding is masked (docs/method.md#deliberate-differences-from-the-public-code)."""

    def __init__(self, d: int):
        super().__init__()
        self.w1 = nn.Linear(d, d // 2, bias=False)
        self.w2 = nn.Linear(d // 2, 1, bias=False)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        logits = self.w2(torch.tanh(self.w1(x)))  # (B, L, 1)
        if mask is not None:
            logits = logits.masked_fill(mask.unsqueeze(-1) == 0, float("-inf"))
        attn = logits.softmax(dim=1)
        return (attn * x).sum(dim=1), attn


class MeanHead(nn.Module):
    """Multi-granularity aggregation (PIE): mu = l2n(LayerNorm(pooled + sigmoid(fc(attention pool))))."""

    def __init__(self, d: int):
        super().__init__()
        self.pool = AttentionPool(d)
        self.fc = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, pooled: Tensor, tokens: Tensor, mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        r, attn = self.pool(tokens, mask)
        residual = torch.sigmoid(self.fc(r))
        out = self.norm(pooled + residual)
        return {"mu": F.normalize(out, dim=-1), "out": out, "attn": attn, "residual": residual}


class SigmaHead(nn.Module):
    """Uncertainty module: log_sigma = fc_tokens(attention pool) + fc_pooled(pooled)."""

    def __init__(self, d: int):
        super().__init__()
        self.pool = AttentionPool(d)
        self.fc_tokens = nn.Linear(d, d)
        self.fc_pooled = nn.Linear(d, d)

    def forward(self, pooled: Tensor, tokens: Tensor, mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        r, attn = self.pool(tokens, mask)
        return {"log_sigma": self.fc_tokens(r) + self.fc_pooled(pooled), "attn": attn}


# ----------------------------------------------------------------------------- similarity kernels

def _chunk_rows(a: Tensor, b: Tensor) -> int:
    """Queries per chunk so that one (chunk, Nv, Lq, Lf) similarity block stays under the budget."""
    return max(1, MAX_SIM_CHUNK_ELEMENTS // max(1, b.shape[0] * a.shape[1] * b.shape[1]))


def _chunked_max(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """max and argmax over b's rows of <a[q, t], b[v, f]>: two (Nq, Nv, Lq) tensors.

    Each chunk is one matrix product laid out (q, t, v, f), so the max runs over the contiguous
    last axis and no 4-D tensor is ever permuted or copied. Under autocast the products (and so
    the result) take the autocast dtype.
    """
    (nq, lq, d), (nv, lf, _) = a.shape, b.shape
    step = _chunk_rows(a, b)
    flat_b = b.reshape(nv * lf, d)
    values: list[Tensor] = []
    index: list[Tensor] = []
    for i in range(0, nq, step):
        chunk = a[i:i + step]
        sims = (chunk.reshape(-1, d) @ flat_b.t()).view(chunk.shape[0], lq, nv, lf)
        v, k = sims.max(dim=-1)
        values.append(v)
        index.append(k)
    return torch.cat(values).transpose(1, 2), torch.cat(index).transpose(1, 2)


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
        values = _chunked_max(a, b)[0]
    values = torch.where(has_padding[None, :, None], values.clamp(min=0), values)
    return F.pad(values, (0, length_a - ka))  # padded query words score 0


# ----------------------------------------------------------------------------- encodings

@dataclass
class _Encoding:
    """Tensors with a shared leading dimension; ``select`` and ``to`` act on all of them."""

    def select(self, index: Union[slice, Tensor, list[int]]):
        return type(self)(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: Union[str, torch.device]):
        return type(self)(*(getattr(self, f.name).to(device) for f in fields(self)))

    def __len__(self) -> int:
        return getattr(self, fields(self)[0].name).shape[0]


@dataclass
class VideoEncoding(_Encoding):
    clips: Tensor   # (Nv, Lc, d)
    frames: Tensor  # (Nv, Lf, d), exactly 0 at padded frames
    mask: Tensor    # (Nv, Lf)


@dataclass
class QueryEncoding(_Encoding):
    pooled: Tensor  # (Nq, d) clip-branch query
    words: Tensor   # (Nq, Lq, d) frame-branch (CSA) word tokens, exactly 0 at padding
    mask: Tensor    # (Nq, Lq)


@dataclass
class ModelOutput:
    """Everything the training objective needs from one forward pass."""

    clip_scores: Tensor        # (Nq, Nv) cosine
    clip_scores_raw: Tensor    # (Nq, Nv) dot products (NCE)
    frame_scores: Tensor       # (Nq, Nv) normalised frame-scale score
    frame_scores_raw: Tensor   # (Nq, Nv)
    pooled_queries: Tensor     # (Nq, d) for the query-diversity and OT terms
    clips: Tensor              # (Nv, Lc, d) for the OT term
    labels: Tensor             # (Nq,) video index of each query
    video_proxies: Optional[Tensor] = None  # (Nv, K, d)
    text_proxies: Optional[Tensor] = None   # (Nv, K, d)
    video_log_sigma: Optional[Tensor] = None
    text_log_sigma: Optional[Tensor] = None


@dataclass
class Distributions:
    """Gaussian parameters of videos and of query support sets (one per video)."""

    video_mu: Tensor         # (Nv, d), unit norm
    video_log_sigma: Tensor  # (Nv, d)
    text_mu: Tensor          # (Nv, d)
    text_log_sigma: Tensor   # (Nv, d)


def support_sets(words: Tensor, word_mask: Tensor, labels: Tensor, n_videos: int) -> tuple[Tensor, Tensor]:
    """Concatenate the valid word tokens of each video's queries: (Nv, S, d) tokens and (Nv, S) mask.

    Differs from the public code on purpose: only valid tokens, padded to the longest set of
    the batch (the public code reserves a fixed 5x/26x the query length and attends over padding).
    """
    valid = word_mask > 0
    owner = labels.unsqueeze(1).expand_as(valid)[valid]  # video of each valid token, query order kept
    tokens = words[valid]                                 # (T, d)
    counts = torch.bincount(owner, minlength=n_videos)
    size = int(counts.max()) if counts.numel() else 0
    order = torch.argsort(owner, stable=True)
    owner, tokens = owner[order], tokens[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(owner.shape[0], device=owner.device) - starts[owner]
    out = words.new_zeros(n_videos, max(size, 1), words.shape[-1])
    mask = word_mask.new_zeros(n_videos, max(size, 1))
    out[owner, slot] = tokens
    mask[owner, slot] = 1.0
    return out, mask


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid rows of x (B, L, d) under mask (B, L); an all-padding row gives 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def sample_proxies(mu: Tensor, log_sigma: Tensor, k: int) -> Tensor:
    """K samples mu + eps * exp(log_sigma), eps ~ N(0, I): (B, K, d)."""
    eps = torch.randn(mu.shape[0], k, mu.shape[1], dtype=mu.dtype, device=mu.device)
    return mu.unsqueeze(1) + eps * log_sigma.exp().unsqueeze(1)


# ----------------------------------------------------------------------------- the model

class RALModel(nn.Module):
    """GMMFormer v2 with RAL: clip branch + CSA frame branch for scoring, MSRA heads for training."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, h, p_in, p = cfg.hidden_size, cfg.n_heads, cfg.input_drop, cfg.drop
        self.weight_token = nn.Parameter(torch.randn(1, 1, d))  # shared by both GMM blocks
        # queries: clip-branch encoder (pooled) and CSA word encoder share the positional table
        self.query_pos = PositionalEncoding(cfg.max_desc_len, d, p_in)
        self.query_proj = LinearLayer(cfg.text_dim, d, p_in)
        self.query_encoder = TransformerLayer(d, h, p)
        self.query_pool = nn.Linear(d, 1, bias=False)
        self.word_proj = LinearLayer(cfg.text_dim, d, p_in)
        self.word_encoder = TransformerLayer(d, h, p)
        self.word_confidence_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        # videos: clip branch (32 rows) and frame branch (128 rows)
        self.clip_pos = PositionalEncoding(cfg.max_frames, d, p_in)
        self.clip_proj = LinearLayer(cfg.visual_dim, d, p_in)
        self.clip_encoder = GMMBlock(cfg.n_clips, d, h, p, cfg.sft_factor, cfg.checkpoint_branches)
        self.frame_pos = PositionalEncoding(cfg.max_frames, d, p_in)
        self.frame_proj = LinearLayer(cfg.visual_dim, d, p_in)
        self.frame_encoder = GMMBlock(cfg.max_frames, d, h, p, cfg.sft_factor, cfg.checkpoint_branches)
        # MSRA: mean and sigma heads per modality
        self.video_mean, self.video_sigma = MeanHead(d), SigmaHead(d)
        self.text_mean, self.text_sigma = MeanHead(d), SigmaHead(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, initializer_range) for Linear/Embedding weights, zero biases, unit LayerNorms."""
        std = self.cfg.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # --- encoders (docs/method.md#backbone-gmmformer-v2) ---

    def encode_videos(self, clip_feats: Tensor, frame_feats: Tensor, frame_mask: Tensor) -> VideoEncoding:
        """Clip tokens (Nv, 32, d) and frame tokens (Nv, 128, d); frames shorter than 128 are padded here."""
        pad = self.cfg.max_frames - frame_feats.shape[1]
        if pad < 0:
            raise ValueError(f"frame_feats has {frame_feats.shape[1]} rows; at most {self.cfg.max_frames} expected "
                             "(bin longer videos first, see ralbook.data.video_inputs)")
        frame_mask = frame_mask.to(frame_feats.dtype)
        if pad:
            frame_feats = F.pad(frame_feats, (0, 0, 0, pad))
            frame_mask = F.pad(frame_mask, (0, pad))
        clips = self.clip_encoder(self.clip_pos(self.clip_proj(clip_feats)), None, self.weight_token)
        # position-wise layers of the frame branch run on valid frames only (see Packing)
        packing = Packing.from_mask(frame_mask)
        x = self.frame_pos(self.frame_proj(packing.pack(frame_feats)), packing.positions)
        frames = self.frame_encoder(x, frame_mask, self.weight_token, packing)
        return VideoEncoding(clips, frames, frame_mask)

    def encode_queries(self, query_feats: Tensor, query_mask: Tensor) -> QueryEncoding:
        """Pooled clip-branch query (Nq, d) and CSA word tokens (Nq, Lq, d)."""
        query_mask = query_mask.to(query_feats.dtype)
        # position-wise layers run on valid tokens only (see Packing); padded tokens come out as 0
        packing = Packing.from_mask(query_mask)
        feats, positions = packing.pack(query_feats), packing.positions
        tokens = self.query_encoder(self.query_pos(self.query_proj(feats), positions), query_mask, packing=packing)
        tokens = packing.unpack(tokens)
        logits = self.query_pool(tokens).squeeze(-1)
        logits = logits * query_mask + (1.0 - query_mask) * -1e10
        pooled = torch.einsum("bl,bld->bd", logits.softmax(dim=-1), tokens)
        words = self.word_encoder(self.query_pos(self.word_proj(feats), positions), query_mask, packing=packing)
        return QueryEncoding(pooled, packing.unpack(words), query_mask)

    # --- scores (docs/method.md#backbone-gmmformer-v2 and #csa-confidence-aware-set-to-set-alignment) ---

    def _word_weights(self, words: Tensor, mask: Tensor) -> Tensor:
        if not self.cfg.word_confidence:
            return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
        logits = self.word_confidence_mlp(words).squeeze(-1).masked_fill(mask == 0, float("-inf"))
        return logits.softmax(dim=-1)

    def word_confidence(self, query_feats: Tensor, query_mask: Tensor) -> Tensor:
        """(Nq, Lq) word-confidence weights g used by the normalised frame score; exactly 0 at padding."""
        q = self.encode_queries(query_feats, query_mask)
        return self._word_weights(F.normalize(q.words, dim=-1), q.mask)

    def clip_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        q, c = queries.pooled, videos.clips
        if normalized:
            q, c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
        return torch.einsum("qd,vcd->qvc", q, c).max(dim=-1).values

    def frame_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        f = F.normalize(videos.frames, dim=-1) if normalized else videos.frames
        if not self.cfg.csa:  # GMMFormer v2: max over frames of the pooled query's similarity
            q = queries.pooled.unsqueeze(1)
            q = F.normalize(q, dim=-1) if normalized else q
            ones = q.new_ones(q.shape[:2])
            return masked_max_sim(q, ones, f, videos.mask).squeeze(-1)
        w = F.normalize(queries.words, dim=-1) if normalized else queries.words
        sims = masked_max_sim(w, queries.mask, f, videos.mask)  # (Nq, Nv, Lq)
        return torch.einsum("qvt,qt->qv", sims, self._word_weights(w, queries.mask))

    def score_encoded(self, queries: QueryEncoding, videos: VideoEncoding,
                      normalized: bool = True) -> tuple[Tensor, Tensor]:
        """(clip_scores, frame_scores), each (Nq, Nv)."""
        return self.clip_scores(queries, videos, normalized), self.frame_scores(queries, videos, normalized)

    def score(self, query_feats: Tensor, query_mask: Tensor, videos: VideoEncoding,
              normalized: bool = True) -> tuple[Tensor, Tensor]:
        return self.score_encoded(self.encode_queries(query_feats, query_mask), videos, normalized)

    def fuse(self, clip_scores: Tensor, frame_scores: Tensor) -> Tensor:
        """Final ranking score alpha * S_c + (1 - alpha) * S_f."""
        return self.cfg.alpha * clip_scores + (1.0 - self.cfg.alpha) * frame_scores

    # --- MSRA (docs/method.md#msra-multimodal-semantic-robust-alignment) ---

    def video_distribution(self, videos: VideoEncoding) -> dict[str, Tensor]:
        frames = F.normalize(videos.frames, dim=-1)
        pooled = F.normalize(masked_mean(frames, videos.mask), dim=-1)
        # docs/method.md#deliberate-differences-from-the-public-code: padded frames are masked out of the attention pooling
        mean = self.video_mean(pooled, videos.frames, videos.mask)
        sigma = self.video_sigma(pooled, videos.frames, videos.mask)
        return {"mu": mean["mu"], "log_sigma": sigma["log_sigma"]}

    def text_distribution(self, queries: QueryEncoding, labels: Tensor, n_videos: int) -> dict[str, Tensor]:
        tokens, mask = support_sets(queries.words, queries.mask, labels, n_videos)
        pooled = masked_mean(tokens, mask)
        mean = self.text_mean(pooled, tokens, mask)
        sigma = self.text_sigma(pooled, tokens, mask)
        return {"mu": mean["mu"], "log_sigma": sigma["log_sigma"]}

    def distributions(self, batch: dict[str, Tensor]) -> Distributions:
        """mu and log_sigma of each video and of its query support set, for a collate_train batch."""
        videos = self.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        queries = self.encode_queries(batch["query_feats"], batch["query_mask"])
        v = self.video_distribution(videos)
        t = self.text_distribution(queries, batch["labels"], len(videos))
        return Distributions(v["mu"], v["log_sigma"], t["mu"], t["log_sigma"])

    # --- training forward ---

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        videos = self.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        queries = self.encode_queries(batch["query_feats"], batch["query_mask"])
        labels = batch["labels"].to(videos.clips.device)
        clip, frame = self.score_encoded(queries, videos, normalized=True)
        clip_raw, frame_raw = self.score_encoded(queries, videos, normalized=False)
        out = ModelOutput(clip, clip_raw, frame, frame_raw, queries.pooled, videos.clips, labels)
        if self.cfg.msra:
            text = self.text_distribution(queries, labels, len(videos))
            video = self.video_distribution(videos)
            # text proxies are drawn first, then video proxies (same RNG order as the public code)
            out.text_proxies = sample_proxies(text["mu"], text["log_sigma"], self.cfg.n_proxies)
            out.video_proxies = sample_proxies(video["mu"], video["log_sigma"], self.cfg.n_proxies)
            out.text_log_sigma, out.video_log_sigma = text["log_sigma"], video["log_sigma"]
        return out


def build_model(cfg: ModelConfig) -> RALModel:
    """Build a freshly initialised model from a ModelConfig."""
    return RALModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
