"""MS-SL (ACM MM 2022): multi-scale clip proposals and key-clip guided frame attention.

Equal to the public code (HuiGuanLab/ms-sl) for the same weights; ``ralbook.checkpoint``
maps its parameter names. Differences, each harmless to the numbers:

* a batch with a single query works (the public code squeezes the query dimension away);
* the frame-scale score of inference is computed per (query, video) chunk without a loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ralbook.config import ModelConfig
from ralbook.model.backbones.base import SingleLayerQueries
from ralbook.model.encodings import ModelOutput, QueryEncoding, VideoEncoding
from ralbook.model.layers import AttentionBlock
from ralbook.model.scoring import max_over_clips


def multi_scale_proposals(clips: Tensor) -> Tensor:
    """All windows of 1..Lc consecutive clips, averaged: (Nv, Lc, d) -> (Nv, Lc (Lc + 1) / 2, d), shortest first."""
    x = clips.transpose(1, 2)
    return torch.cat([F.avg_pool1d(x, k, stride=1) if k > 1 else x for k in range(1, clips.shape[1] + 1)],
                     dim=2).transpose(1, 2)


class MSSL(SingleLayerQueries):
    """Clip branch: attention over clips, then multi-scale proposals. Frame branch: attention over
    frames; per (query, video) the best proposal attends over the frames (key-clip guided)."""

    name = "ms_sl"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d, h, p = cfg.hidden_size, cfg.n_heads, cfg.drop
        self.clip_encoder = AttentionBlock(d, h, p)
        self.frame_encoder = AttentionBlock(d, h, p)
        self.key_proj = nn.Linear(d, d, bias=False)    # frames -> keys of the key-clip attention
        self.value_proj = nn.Linear(d, d, bias=False)  # frames -> values
        self.build_ral(AttentionBlock(d, h, p))
        self.reset_parameters()

    def encode_videos(self, clip_feats: Tensor, frame_feats: Tensor, frame_mask: Tensor) -> VideoEncoding:
        """Proposals (Nv, Lc (Lc + 1) / 2, d) and frame tokens (Nv, max_frames, d), 0 at padding."""
        frame_feats, frame_mask = self.pad_frames(frame_feats, frame_mask)
        clips = self.clip_encoder(self.clip_pos(self.clip_proj(clip_feats)))
        frames = self.frame_encoder(self.frame_pos(self.frame_proj(frame_feats)), frame_mask)
        return VideoEncoding(multi_scale_proposals(clips), frames * frame_mask.unsqueeze(-1), frame_mask)

    def _key_clips(self, queries: QueryEncoding, videos: VideoEncoding) -> Tensor:
        """(Nq, Nv, d): each video's best proposal for each query (by cosine)."""
        best = max_over_clips(queries.pooled, videos.clips).indices  # (Nq, Nv)
        return videos.clips[torch.arange(len(videos), device=best.device).unsqueeze(0), best]

    def backbone_frame_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        """Key-clip guided attention over each video's frames, then its similarity to the query."""
        keys, values = self.key_proj(videos.frames), self.value_proj(videos.frames)
        logits = torch.einsum("vld,qvd->qvl", keys, self._key_clips(queries, videos))
        weights = logits.masked_fill(videos.mask.unsqueeze(0) == 0, -1e9).softmax(dim=-1)
        feats = torch.einsum("qvl,vld->qvd", weights, values)  # (Nq, Nv, d)
        q = queries.pooled
        if normalized:
            feats, q = F.normalize(feats, dim=-1), F.normalize(q, dim=-1)
        return torch.einsum("qvd,qd->qv", feats, q)

    def guided_positive_features(self, queries: QueryEncoding, videos: VideoEncoding, labels: Tensor) -> Tensor:
        """(Nq, d): the key-clip guided frame feature of each query's own video (training)."""
        best = max_over_clips(queries.pooled, videos.clips).indices  # (Nq, Nv)
        rows = torch.arange(len(labels), device=labels.device)
        key_clip = videos.clips[labels, best[rows, labels]]  # (Nq, d)
        frames, mask = videos.frames[labels], videos.mask[labels]
        logits = torch.einsum("qld,qd->ql", self.key_proj(frames), key_clip)
        weights = logits.masked_fill(mask == 0, -1e9).softmax(dim=-1)
        return torch.einsum("ql,qld->qd", weights, self.value_proj(frames))

    def training_output(self, queries: QueryEncoding, videos: VideoEncoding, labels: Tensor) -> ModelOutput:
        """Without CSA, MS-SL trains its frame scale on (Nq, Nq) scores: query i against the feature
        that query j's key clip draws from j's own video; the positives are on the diagonal."""
        if self.cfg.csa:
            return super().training_output(queries, videos, labels)
        feats, q = self.guided_positive_features(queries, videos, labels), queries.pooled
        frame = F.normalize(q, dim=-1) @ F.normalize(feats, dim=-1).t()
        out = ModelOutput(self.clip_scores(queries, videos), self.clip_scores(queries, videos, normalized=False),
                          frame, q @ feats.t(), q, videos.clips, labels, backbone=self.name)
        out.frame_by_query = True
        return out
