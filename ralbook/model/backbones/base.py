"""The small interface every backbone implements, and what all of them share.

A backbone encodes videos into clip-level and frame-level tokens (``VideoEncoding``), encodes
queries (``QueryEncoding``: a pooled query for the clip scale, word tokens for CSA), and scores
them at the clip scale and the frame scale. RAL's parts (``RALParts``) use only this interface:
CSA replaces ``backbone_frame_scores`` when ``cfg.csa`` is on, MSRA reads frame and word tokens.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ralbook.config import ModelConfig
from ralbook.model.encodings import ModelOutput, QueryEncoding, VideoEncoding
from ralbook.model.layers import AttentionBlock, LinearLayer, PositionalEncoding, masked_softmax_pool
from ralbook.model.ral import RALParts
from ralbook.model.scoring import best_clip_score


class Backbone(RALParts, nn.Module):
    """Base class: subclasses define ``encode_videos``, ``encode_queries`` and ``backbone_frame_scores``."""

    name = "?"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    # --- the interface ---

    def encode_videos(self, clip_feats: Tensor, frame_feats: Tensor, frame_mask: Tensor) -> VideoEncoding:
        raise NotImplementedError

    def encode_queries(self, query_feats: Tensor, query_mask: Tensor) -> QueryEncoding:
        raise NotImplementedError

    def backbone_frame_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        """The backbone's own frame-scale score (Nq, Nv), used when CSA is off."""
        raise NotImplementedError

    # --- shared ---

    def reset_parameters(self) -> None:
        """N(0, initializer_range) for Linear/Embedding weights, zero biases, unit LayerNorms (all three codes)."""
        std = self.cfg.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def pad_frames(self, frame_feats: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Frames and float mask zero-padded to ``max_frames`` rows (an error if there are more)."""
        pad = self.cfg.max_frames - frame_feats.shape[1]
        if pad < 0:
            raise ValueError(f"frame_feats has {frame_feats.shape[1]} rows; at most {self.cfg.max_frames} expected "
                             "(bin longer videos first, see ralbook.data.video_inputs)")
        frame_mask = frame_mask.to(frame_feats.dtype)
        if pad:
            frame_feats = F.pad(frame_feats, (0, 0, 0, pad))
            frame_mask = F.pad(frame_mask, (0, pad))
        return frame_feats, frame_mask

    def clip_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        """Best clip per (query, video): cosine (or dot product) of the pooled query and the clip tokens."""
        return best_clip_score(queries.pooled, videos.clips, normalized)

    def frame_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        if self.cfg.csa:
            return self.csa_frame_scores(queries, videos, normalized)
        return self.backbone_frame_scores(queries, videos, normalized)

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

    def training_output(self, queries: QueryEncoding, videos: VideoEncoding, labels: Tensor) -> ModelOutput:
        """Scores of every query against every video of the batch, normalised and raw."""
        clip, frame = self.score_encoded(queries, videos, normalized=True)
        clip_raw, frame_raw = self.score_encoded(queries, videos, normalized=False)
        return ModelOutput(clip, clip_raw, frame, frame_raw, queries.pooled, videos.clips, labels, backbone=self.name)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        videos = self.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        queries = self.encode_queries(batch["query_feats"], batch["query_mask"])
        labels = batch["labels"].to(videos.clips.device)
        return self.add_proxies(self.training_output(queries, videos, labels), queries, videos)


class SingleLayerQueries(Backbone):
    """Query branch of MS-SL and GMMFormer: projection, positions, one attention block, attention pooling.

    ``__init__`` creates the query branch and the input layers of both video branches; the subclass adds
    its video encoders. With CSA or MSRA on, RAL's word encoder gives the word tokens; otherwise they are
    the query tokens.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d, p_in = cfg.hidden_size, cfg.input_drop
        self.query_pos = PositionalEncoding(cfg.max_desc_len, d, p_in)
        self.clip_pos = PositionalEncoding(cfg.max_frames, d, p_in)
        self.frame_pos = PositionalEncoding(cfg.max_frames, d, p_in)
        self.query_proj = LinearLayer(cfg.text_dim, d, p_in)
        self.query_encoder = AttentionBlock(d, cfg.n_heads, cfg.drop)
        self.query_pool = nn.Linear(d, 1, bias=False)
        self.clip_proj = LinearLayer(cfg.visual_dim, d, p_in)
        self.frame_proj = LinearLayer(cfg.visual_dim, d, p_in)

    def encode_queries(self, query_feats: Tensor, query_mask: Tensor) -> QueryEncoding:
        query_mask = query_mask.to(query_feats.dtype)
        tokens = self.query_encoder(self.query_pos(self.query_proj(query_feats)), query_mask)
        pooled = masked_softmax_pool(self.query_pool(tokens).squeeze(-1), query_mask, tokens)
        if self.cfg.csa or self.cfg.msra:
            tokens = self.word_encoder(self.query_pos(self.word_proj(query_feats)), query_mask)
        return QueryEncoding(pooled, tokens * query_mask.unsqueeze(-1), query_mask)
