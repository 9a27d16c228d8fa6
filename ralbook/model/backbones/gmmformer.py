"""GMMFormer (AAAI 2024): Gaussian-windowed attention blocks, pooled frame branch.

Equal to the public code (gimpong/AAAI24-GMMFormer) for the same weights with
``gmm_windows="batch"``; ``ralbook.checkpoint`` maps its parameter names. Differences:

* ``gmm_windows="per_video"`` (the default) gives each video the Gaussian windows of its own
  length, so its encoding does not depend on the other videos of its batch (the public code
  builds them over the batch's padded length);
* a batch with a single video or a single query works (the public code squeezes those dimensions away).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ralbook.config import ModelConfig
from ralbook.model.backbones.base import SingleLayerQueries
from ralbook.model.encodings import QueryEncoding, VideoEncoding
from ralbook.model.gmm import GaussianBlock
from ralbook.model.layers import AttentionBlock, masked_softmax_pool


class GMMFormer(SingleLayerQueries):
    """Clip branch: two Gaussian blocks over 32 clips. Frame branch: two Gaussian blocks over the
    frames, then attention pooling to one vector per video, whose cosine with the query is the
    frame-scale score."""

    name = "gmmformer"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d, h, p, windows = cfg.hidden_size, cfg.n_heads, cfg.drop, cfg.gmm_windows
        self.clip_encoder = GaussianBlock(d, h, p, windows)
        self.clip_encoder_2 = GaussianBlock(d, h, p, windows)
        self.frame_encoder = GaussianBlock(d, h, p, windows)
        self.frame_encoder_2 = GaussianBlock(d, h, p, windows)
        self.frame_pool = nn.Linear(d, 1, bias=False)
        self.build_ral(AttentionBlock(d, h, p))
        self.reset_parameters()

    def encode_videos(self, clip_feats: Tensor, frame_feats: Tensor, frame_mask: Tensor) -> VideoEncoding:
        """Clip tokens (Nv, Lc, d) and frame tokens (Nv, max_frames, d), 0 at padding.

        The frame branch runs on the rows given (the batch's padded length), then pads to max_frames.
        """
        frame_mask = frame_mask.to(frame_feats.dtype)
        clips = self.clip_encoder_2(self.clip_encoder(self.clip_pos(self.clip_proj(clip_feats))))
        x = self.frame_encoder(self.frame_pos(self.frame_proj(frame_feats)), frame_mask)
        frames = self.frame_encoder_2(x, frame_mask) * frame_mask.unsqueeze(-1)
        frames, frame_mask = self.pad_frames(frames, frame_mask)
        return VideoEncoding(clips, frames, frame_mask)

    def pooled_frames(self, videos: VideoEncoding) -> Tensor:
        """(Nv, d): attention pooling of the frame tokens (the public code's video vector)."""
        return masked_softmax_pool(self.frame_pool(videos.frames).squeeze(-1), videos.mask, videos.frames)

    def backbone_frame_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        v, q = self.pooled_frames(videos), queries.pooled
        if normalized:
            v, q = F.normalize(v, dim=-1), F.normalize(q, dim=-1)
        return q @ v.t()
