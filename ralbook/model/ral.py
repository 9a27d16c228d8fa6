"""RAL's parts, for any backbone: MSRA mean / sigma heads, support sets, proxies, and ``RALParts``
(CSA's word encoder, word confidence and set-to-set frame score; MSRA's distributions and proxies)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ralbook.model.encodings import Distributions, ModelOutput, QueryEncoding, VideoEncoding
from ralbook.model.layers import LinearLayer, masked_mean
from ralbook.model.scoring import masked_max_sim


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


# ----------------------------------------------------------------------------- RAL attached to a backbone

class RALParts:
    """RAL's parts for any backbone (mixed into the backbone's nn.Module; it has ``self.cfg``).

    The backbone provides ``encode_queries`` (whose ``words`` are the CSA word tokens) and
    ``encode_videos`` (whose ``frames`` are its frame-level tokens). RAL adds:

    * CSA: a word encoder (``word_proj`` + ``word_encoder``), word confidence (``word_confidence_mlp``)
      and the set-to-set frame score, which replaces the backbone's frame-scale score;
    * MSRA: Gaussian mean / sigma heads on frame tokens and on each video's query support set, and
      the proxies sampled from them for L_PM and L_DA.
    """

    cfg: Any

    def build_ral(self, word_encoder: nn.Module) -> None:
        """Create the parts the switches ask for: with all three off the model is the bare backbone."""
        cfg, d = self.cfg, self.cfg.hidden_size
        if cfg.csa or cfg.msra:
            self.word_proj = LinearLayer(cfg.text_dim, d, cfg.input_drop)
            self.word_encoder = word_encoder
        if cfg.csa and cfg.word_confidence:
            self.word_confidence_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        if cfg.msra:
            self.video_mean, self.video_sigma = MeanHead(d), SigmaHead(d)
            self.text_mean, self.text_sigma = MeanHead(d), SigmaHead(d)

    def _word_weights(self, words: Tensor, mask: Tensor) -> Tensor:
        if not self.cfg.word_confidence:
            return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
        logits = self.word_confidence_mlp(words).squeeze(-1).masked_fill(mask == 0, float("-inf"))
        return logits.softmax(dim=-1)

    def word_confidence(self, query_feats: Tensor, query_mask: Tensor) -> Tensor:
        """(Nq, Lq) word-confidence weights g used by the normalised frame score; exactly 0 at padding."""
        q = self.encode_queries(query_feats, query_mask)  # type: ignore[attr-defined]
        return self._word_weights(F.normalize(q.words, dim=-1), q.mask)

    def csa_frame_scores(self, queries: QueryEncoding, videos: VideoEncoding, normalized: bool = True) -> Tensor:
        """Set-to-set frame score: per word its best frame, weighted by word confidence -> (Nq, Nv)."""
        f = F.normalize(videos.frames, dim=-1) if normalized else videos.frames
        w = F.normalize(queries.words, dim=-1) if normalized else queries.words
        sims = masked_max_sim(w, queries.mask, f, videos.mask)  # (Nq, Nv, Lq)
        return torch.einsum("qvt,qt->qv", sims, self._word_weights(w, queries.mask))

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
        videos = self.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])  # type: ignore
        queries = self.encode_queries(batch["query_feats"], batch["query_mask"])  # type: ignore[attr-defined]
        v = self.video_distribution(videos)
        t = self.text_distribution(queries, batch["labels"], len(videos))
        return Distributions(v["mu"], v["log_sigma"], t["mu"], t["log_sigma"])

    def add_proxies(self, out: ModelOutput, queries: QueryEncoding, videos: VideoEncoding) -> ModelOutput:
        """With MSRA on, sample the text and video proxies (and keep their log sigmas) into ``out``."""
        if not self.cfg.msra:
            return out
        text = self.text_distribution(queries, out.labels, len(videos))
        video = self.video_distribution(videos)
        # text proxies are drawn first, then video proxies (same RNG order as the public code)
        out.text_proxies = sample_proxies(text["mu"], text["log_sigma"], self.cfg.n_proxies)
        out.video_proxies = sample_proxies(video["mu"], video["log_sigma"], self.cfg.n_proxies)
        out.text_log_sigma, out.video_log_sigma = text["log_sigma"], video["log_sigma"]
        return out
