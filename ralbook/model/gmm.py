"""The dynamic GMM block of GMMFormer v2: Gaussian-windowed attention branches mixed per position."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch import Tensor

from ralbook.model.layers import Dropout, Packing, TransformerLayer, gaussian_window

# Widths of the eight parallel branches of a GMM block; None = plain attention (GMMFormer v2 order).
GMM_WIDTHS: tuple[Optional[float], ...] = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)


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
