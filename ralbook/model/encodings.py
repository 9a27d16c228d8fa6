"""What the encoders and the training forward pass hand on: video / query encodings and outputs."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
from torch import Tensor

class _Encoding:
    """Tensors with a shared leading dimension; ``select`` and ``to`` act on all of them."""

    def select(self, index: Union[slice, Tensor, list[int]]):
        return type(self)(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: Union[str, torch.device]):
        return type(self)(*(getattr(self, f.name).to(device) for f in fields(self)))

    def __len__(self) -> int:
        return getattr(self, fields(self)[0].name).shape[0]


@dataclass
class VideoEncoding(_Encoding):
    clips: Tensor   # (Nv, Lc, d)
    frames: Tensor  # (Nv, Lf, d), exactly 0 at padded frames
    mask: Tensor    # (Nv, Lf)


@dataclass
class QueryEncoding(_Encoding):
    pooled: Tensor  # (Nq, d) clip-branch query
    words: Tensor   # (Nq, Lq, d) frame-branch (CSA) word tokens, exactly 0 at padding
    mask: Tensor    # (Nq, Lq)


@dataclass
class ModelOutput:
    """Everything the training objective needs from one forward pass."""

    clip_scores: Tensor        # (Nq, Nv) cosine
    clip_scores_raw: Tensor    # (Nq, Nv) dot products (NCE)
    frame_scores: Tensor       # (Nq, Nv) normalised frame-scale score
    frame_scores_raw: Tensor   # (Nq, Nv)
    pooled_queries: Tensor     # (Nq, d) for the query-diversity and OT terms
    clips: Tensor              # (Nv, Lc, d) for the OT term
    labels: Tensor             # (Nq,) video index of each query
    video_proxies: Optional[Tensor] = None  # (Nv, K, d)
    text_proxies: Optional[Tensor] = None   # (Nv, K, d)
    video_log_sigma: Optional[Tensor] = None
    text_log_sigma: Optional[Tensor] = None
    backbone: str = "gmmformer_v2"          # selects the backbone's own loss terms
    frame_by_query: bool = False            # frame scores are (Nq, Nq), positives on the diagonal (MS-SL)


@dataclass
class Distributions:
    """Gaussian parameters of videos and of query support sets (one per video)."""

    video_mu: Tensor         # (Nv, d), unit norm
    video_log_sigma: Tensor  # (Nv, d)
    text_mu: Tensor          # (Nv, d)
    text_log_sigma: Tensor   # (Nv, d)
