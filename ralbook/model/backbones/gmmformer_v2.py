"""GMMFormer v2 backbone + RAL (CSA and MSRA), in the order of SPEC sections 3-6.

Shapes: ``Nq`` queries, ``Nv`` videos, ``Lq`` query tokens, ``Lc`` clips (32), ``Lf`` frames (128),
``d`` hidden size, ``K`` proxies. Masks are float 0/1 tensors, 1 = valid.

Deliberate differences from the authors' public code (SPEC section 9), each one marked where it happens:

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
from ralbook.model.encodings import Distributions, ModelOutput, QueryEncoding, VideoEncoding
from ralbook.model.gmm import GMMBlock
from ralbook.model.layers import LinearLayer, Packing, PositionalEncoding, TransformerLayer, masked_mean
from ralbook.model.ral import MeanHead, SigmaHead, sample_proxies, support_sets
from ralbook.model.scoring import masked_max_sim


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

    # --- encoders (SPEC section 4) ---

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

    # --- scores (SPEC sections 4-5) ---

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

    # --- MSRA (SPEC section 6) ---

    def video_distribution(self, videos: VideoEncoding) -> dict[str, Tensor]:
        frames = F.normalize(videos.frames, dim=-1)
        pooled = F.normalize(masked_mean(frames, videos.mask), dim=-1)
        # SPEC 9: padded frames are masked out of the attention pooling
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
