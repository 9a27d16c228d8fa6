"""Shared building blocks of every backbone: dropout, projections, positional tables, packing,
attention (optionally Gaussian-windowed), feed-forward and post-norm transformer layers.

Masks are float 0/1 tensors, 1 = valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

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
    return gaussian_windows(torch.tensor([length]), length, width)[0]


def gaussian_windows(lengths: Tensor, size: int, width: float) -> Tensor:
    """(B, size, size): for each row of ``lengths`` the window of its own length, in the top-left corner.

    Row i of a length-n window peaks at key i / n over key positions linspace(0, 1, n); keys at or
    beyond n get 0 and rows at or beyond n get 1 (padding: masked or discarded anyway).
    """
    n = lengths.to(torch.float64).view(-1, 1, 1)
    index = torch.arange(size, dtype=torch.float64)
    centre = index.view(1, -1, 1) / n
    position = index.view(1, 1, -1) / (n - 1).clamp(min=1)  # linspace(0, 1, n); a single key sits at 0
    s = max(width, 0.01) / 9
    # the Gaussian density divided by its row maximum, computed in log space
    # (the density itself underflows to a row of zeros for narrow windows at short lengths)
    log_density = -((position - centre) ** 2) / (2 * s**2)
    log_density = log_density.masked_fill(index.view(1, 1, -1) >= n, float("-inf"))
    window = (log_density - log_density.max(dim=-1, keepdim=True).values).exp()
    return window.masked_fill(index.view(1, -1, 1) >= n, 1.0).float()


def masked_softmax_pool(logits: Tensor, mask: Tensor, tokens: Tensor) -> Tensor:
    """sum_l softmax_l(logits) tokens_l over valid positions: logits (B, L), mask (B, L), tokens (B, L, d) -> (B, d).

    Padding gets the logit -1e10 (the public codes' form), i.e. exactly zero weight.
    """
    logits = logits * mask + (1.0 - mask) * -1e10
    return torch.einsum("bl,bld->bd", logits.softmax(dim=-1), tokens)


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
                packing: Optional[Packing] = None, window: Optional[Tensor] = None) -> Tensor:
        """``window`` (Lq, Lk) or (B, 1, Lq, Lk) replaces the layer's own window for this call."""
        window = self.window if window is None else window
        q, k, v = self.q(query), self.k(keys), self.v(keys)
        if packing is not None:  # the projections ran on valid rows only; attention needs (B, L, d)
            q, k, v = packing.unpack(q), packing.unpack(k), packing.unpack(v)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, h, Lq, Lk)
        if window is not None:
            scores = scores * window  # shrinks distant logits towards 0 (not a log-bias)
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


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid rows of x (B, L, d) under mask (B, L); an all-padding row gives 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class AttentionBlock(nn.Module):
    """The attention sub-layer of MS-SL and GMMFormer ("BertAttention"): self-attention, output
    projection, dropout, residual and LayerNorm; no feed-forward part."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.attn = Attention(d, n_heads, dropout)
        self.out = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, window: Optional[Tensor] = None) -> Tensor:
        return self.norm(x + self.dropout(self.out(self.attn(x, x, mask, window=window))))
