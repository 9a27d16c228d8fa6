"""RAL's parts that do not depend on a backbone: MSRA mean / sigma heads, support sets, proxies."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

class AttentionPool(nn.Module):
    """a = softmax_tokens(w2 tanh(w1 x)); returns (sum a x, a). Padding is masked (SPEC section 9)."""

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

def sample_proxies(mu: Tensor, log_sigma: Tensor, k: int) -> Tensor:
    """K samples mu + eps * exp(log_sigma), eps ~ N(0, I): (B, K, d)."""
    eps = torch.randn(mu.shape[0], k, mu.shape[1], dtype=mu.dtype, device=mu.device)
    return mu.unsqueeze(1) + eps * log_sigma.exp().unsqueeze(1)
