"""The Gaussian blocks: GMMFormer v2's dynamic GMM block and GMMFormer's averaged four-branch block."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch import Tensor

from ralbook.model.layers import AttentionBlock, Dropout, Packing, TransformerLayer, gaussian_window, gaussian_windows

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


# Widths of the four branches of a GMMFormer (v1) block; None = plain attention.
GMMFORMER_WIDTHS: tuple[Optional[float], ...] = (None, 0.5, 1.0, 5.0)
WINDOW_MODES = ("per_video", "batch")


class GaussianBlock(nn.Module):
    """GMMFormer's block: four attention sub-layers with Gaussian windows of different widths, averaged.

    ``windows="batch"`` builds each window over the batch's padded length, as the public code
    does, so a video encodes differently depending on the padding of its batch. ``"per_video"``
    gives each video the window of its own length (the same as a batch holding only that video),
    so the encoding does not depend on the batch.
    """

    def __init__(self, d: int, n_heads: int, dropout: float, windows: str = "per_video"):
        super().__init__()
        if windows not in WINDOW_MODES:
            raise ValueError(f"windows must be one of {WINDOW_MODES}, got {windows!r}")
        self.windows = windows
        self.branches = nn.ModuleList(AttentionBlock(d, n_heads, dropout) for _ in GMMFORMER_WIDTHS)
        self._cache: dict[tuple, Tensor] = {}

    def _window(self, width: float, length: int, mask: Optional[Tensor], device: torch.device) -> Tensor:
        if mask is None or self.windows == "batch":  # no padding, or the public code's padded-length window
            key = (width, length, device)
            if key not in self._cache:
                self._cache[key] = gaussian_window(length, width).to(device)
            return self._cache[key]
        lengths = mask.sum(dim=1).round().long().cpu()
        return gaussian_windows(lengths, length, width).to(device).unsqueeze(1)  # (B, 1, L, L)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """x (B, L, d), mask (B, L) or None -> (B, L, d)."""
        outs = [branch(x, mask, None if width is None else self._window(width, x.shape[1], mask, x.device))
                for width, branch in zip(GMMFORMER_WIDTHS, self.branches)]
        return torch.stack(outs, dim=-1).mean(dim=-1)
