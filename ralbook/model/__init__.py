"""The model: shared layers, the GMM block, scoring kernels, RAL's parts and one module per backbone.

``from ralbook.model import RALModel, build_model, ...`` keeps working: the public names of the
former single-file module are re-exported here. Constants are copies: patch them in their module
(e.g. ``ralbook.model.scoring.MAX_SIM_CHUNK_ELEMENTS``).
"""
from ralbook.model.backbones import BACKBONES, Backbone, build_model, count_parameters
from ralbook.model.backbones.gmmformer import GMMFormer
from ralbook.model.backbones.gmmformer_v2 import GMMFormerV2, RALModel
from ralbook.model.backbones.ms_sl import MSSL
from ralbook.model.encodings import Distributions, ModelOutput, QueryEncoding, VideoEncoding
from ralbook.model.gmm import GMM_WIDTHS, GMMBlock
from ralbook.model.layers import (Attention, AttentionBlock, Dropout, FeedForward, LinearLayer, Packing,
                                  PositionalEncoding, TransformerLayer, gaussian_window, masked_mean)
from ralbook.model.ral import AttentionPool, MeanHead, SigmaHead, sample_proxies, support_sets
from ralbook.model.scoring import MAX_SIM_CHUNK_ELEMENTS, masked_max_sim

__all__ = ["GMMFormerV2",
    "BACKBONES", "GMM_WIDTHS", "MAX_SIM_CHUNK_ELEMENTS", "Attention", "AttentionBlock", "AttentionPool", "Backbone",
    "Distributions", "Dropout", "FeedForward", "GMMBlock", "GMMFormer", "LinearLayer", "MSSL", "MeanHead",
    "ModelOutput", "Packing", "PositionalEncoding", "QueryEncoding", "RALModel", "SigmaHead", "TransformerLayer",
    "VideoEncoding", "build_model", "count_parameters", "gaussian_window", "masked_max_sim", "masked_mean",
    "sample_proxies", "support_sets",
]
