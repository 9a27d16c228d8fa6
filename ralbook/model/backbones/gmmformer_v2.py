"""GMMFormer v2 backbone + RAL (CSA and MSRA), in the order of docs/method.md (building blocks to MSRA).

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

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ralbook.config import ModelConfig
from ralbook.model.backbones.base import Backbone
from ralbook.model.encodings import QueryEncoding, VideoEncoding
from ralbook.model.gmm import GMMBlock
from ralbook.model.layers import LinearLayer, Packing, PositionalEncoding, TransformerLayer, masked_softmax_pool
from ralbook.model.ral import MeanHead, SigmaHead
from ralbook.model.scoring import masked_max_sim


# ----------------------------------------------------------------------------- the model

class GMMFormerV2(Backbone):
    """GMMFormer v2 with RAL: clip branch + CSA frame branch for scoring, MSRA heads for training.

    RAL's parts are always built here (the authors' checkpoints hold them); the switches decide
    whether they are used.
    """

    name = "gmmformer_v2"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
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

    # --- encoders (docs/method.md#backbone-gmmformer-v2) ---

    def encode_videos(self, clip_feats: Tensor, frame_feats: Tensor, frame_mask: Tensor) -> VideoEncoding:
        """Clip tokens (Nv, 32, d) and frame tokens (Nv, 128, d); frames shorter than 128 are padded here."""
        frame_feats, frame_mask = self.pad_frames(frame_feats, frame_mask)
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
        pooled = masked_softmax_pool(self.query_pool(tokens).squeeze(-1), query_mask, tokens)
        words = self.word_encoder(self.query_pos(self.word_proj(feats), positions), query_mask, packing=packing)
        return QueryEncoding(pooled, packing.unpack(words), query_mask)

    # --- scores (docs/method.md#backbone-gmmformer-v2 and #csa-confidence-aware-set-to-set-alignment) ---

    def backbone_frame_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        """GMMFormer v2 without CSA: max over frames of the pooled query's similarity."""
        f = F.normalize(videos.frames, dim=-1) if normalized else videos.frames
        q = queries.pooled.unsqueeze(1)
        q = F.normalize(q, dim=-1) if normalized else q
        return masked_max_sim(q, q.new_ones(q.shape[:2]), f, videos.mask).squeeze(-1)


RALModel = GMMFormerV2  # the name before 0.2 (tests, users' notebooks); checkpoints store no class names
