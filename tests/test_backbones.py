"""MS-SL and GMMFormer against their public code (fixtures made by running it), with RAL off.

The fixtures hold fixed weights (in the public code's key names), ragged inputs (frames 13/9/4/1 of
at most 16, a one-token query, a video with exactly one query) and every score matrix and loss part
their code produces; see tests/fixtures/README.md.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ralbook.checkpoint import load_reference
from ralbook.config import LossConfig, ModelConfig
from ralbook.losses import Objective
from ralbook.model import build_model

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-5
BARE = {"csa": False, "word_confidence": False, "msra": False}


def model_config(fx: dict, backbone: str, **overrides) -> ModelConfig:
    c = fx["config"]
    kw = dict(backbone=backbone, visual_dim=c["visual_input_size"], text_dim=c["query_input_size"],
              hidden_size=c["hidden_size"], n_heads=c["n_heads"], max_desc_len=c["max_desc_l"],
              max_frames=c["max_ctx_l"], n_clips=fx["clip_feats"].shape[1], input_drop=c["input_drop"],
              drop=c["drop"], alpha=fx["clip_scale_w"], **BARE)
    kw.update(overrides)
    return ModelConfig(**kw)


def reference(backbone: str, **overrides):
    fx = torch.load(FIXTURES / f"fixture_{backbone}.pt")
    model = build_model(model_config(fx, backbone, **overrides))
    load_reference(model, fx["state_dict"])
    return model.eval(), fx


def batch_of(fx: dict) -> dict:
    return {"clip_feats": fx["clip_feats"], "frame_feats": fx["frame_feats"], "frame_mask": fx["frame_mask"],
            "query_feats": fx["query_feats"], "query_mask": fx["query_mask"],
            "labels": torch.tensor(fx["labels"])}


def max_abs_differences(backbone: str, **overrides) -> dict[str, float]:
    """Max |ralbook - public code| for every output of the fixture (also used for the closing note)."""
    model, fx = reference(backbone, **overrides)
    b = batch_of(fx)
    with torch.no_grad():
        videos = model.encode_videos(b["clip_feats"], b["frame_feats"], b["frame_mask"])
        queries = model.encode_queries(b["query_feats"], b["query_mask"])
        clip, frame = model.score_encoded(queries, videos)
        out = model(b)
        loss_cfg = loss_config(backbone, fx)
        total, parts = Objective(loss_cfg)(out, hard_negatives=True)
    mine = {"query": queries.pooled, "clip_scores": clip, "frame_scores": frame, "fused": model.fuse(clip, frame),
            "train_clip_scores": out.clip_scores, "train_clip_scores_raw": out.clip_scores_raw,
            "train_frame_scores": out.frame_scores, "train_frame_scores_raw": out.frame_scores_raw}
    valid = fx["frame_mask"].unsqueeze(-1)
    length = fx["frame_mask"].shape[1]
    if backbone == "ms_sl":
        mine["proposals"] = videos.clips
        mine["frames"] = videos.frames[:, :length] * valid
        theirs_frames = fx["frames"] * valid
    else:
        mine["clips"] = videos.clips
        mine["frames"] = model.pooled_frames(videos)
        theirs_frames = fx["frames"]
    diffs = {k: (v - (theirs_frames if k == "frames" else fx[k])).abs().max().item() for k, v in mine.items()}
    names = LOSS_NAMES[backbone]
    for ours, theirs in names.items():
        diffs[f"loss:{theirs}"] = abs(parts[ours].item() - fx["loss"][theirs].item())
    diffs["loss:loss_overall"] = abs(total.item() - fx["loss"]["loss_overall"].item())
    return diffs


LOSS_NAMES = {
    "ms_sl": {"clip_nce": "clip_nce_loss", "clip_triplet": "clip_trip_loss", "frame_nce": "frame_nce_loss",
              "frame_triplet": "frame_trip_loss"},
    "gmmformer": {"clip_nce": "clip_nce_loss", "clip_triplet": "clip_trip_loss", "frame_nce": "frame_nce_loss",
                  "frame_triplet": "frame_trip_loss", "query_diversity": "qdl_loss"},
}


def loss_config(backbone: str, fx: dict) -> LossConfig:
    """The fixture's loss settings; hard negatives from a pool of 1 make the sampled negatives deterministic."""
    if backbone == "ms_sl":
        return LossConfig(margin=fx["config"]["margin"], loss_factor=[0.02, 0.04, 0.0, 0.0], hard_pool_size=1)
    c = fx["loss_config"]
    return LossConfig(margin=c["margin"], loss_factor=[*c["loss_factor"], 0.0], neg_factor=[*c["neg_factor"], 1.0],
                      hard_pool_size=c["hard_pool_size"])


@pytest.mark.parametrize("backbone,overrides", [("ms_sl", {}), ("gmmformer", {"gmm_windows": "batch"})])
def test_equal_to_public_code(backbone, overrides, one_thread):
    diffs = max_abs_differences(backbone, **overrides)
    assert set(diffs) >= {"clip_scores", "frame_scores", "fused", "loss:loss_overall"}
    bad = {k: v for k, v in diffs.items() if not v <= ATOL}
    assert not bad, f"outputs differ from the public code: {bad}"


def test_ms_sl_training_frame_scores_are_query_by_query(one_thread):
    model, fx = reference("ms_sl")
    with torch.no_grad():
        out = model(batch_of(fx))
    n = len(fx["labels"])
    assert out.frame_by_query and out.frame_scores.shape == (n, n)
    assert out.clip_scores.shape == (n, fx["clip_feats"].shape[0])


def test_gmmformer_windows_batch_mode_depends_on_padding_per_video_does_not(one_thread):
    fx = torch.load(FIXTURES / "fixture_gmmformer.pt")
    padded = F.pad(fx["frame_feats"], (0, 0, 0, 16 - fx["frame_feats"].shape[1]))
    padded_mask = F.pad(fx["frame_mask"], (0, 16 - fx["frame_mask"].shape[1]))
    results = {}
    for mode in ("batch", "per_video"):
        model = build_model(model_config(fx, "gmmformer", gmm_windows=mode))
        load_reference(model, fx["state_dict"])
        model.eval()
        with torch.no_grad():
            short = model.pooled_frames(model.encode_videos(fx["clip_feats"], fx["frame_feats"], fx["frame_mask"]))
            long = model.pooled_frames(model.encode_videos(fx["clip_feats"], padded, padded_mask))
        results[mode] = (short, long)
    # batch mode: the public code's encodings for both paddings (which differ from each other)
    torch.testing.assert_close(results["batch"][1], fx["frames_padded_to_max"], atol=ATOL, rtol=0)
    assert (fx["frames"] - fx["frames_padded_to_max"]).abs().max() > 1e-4
    # per-video mode: each video as if alone in its batch, whatever the padding
    for encoded in results["per_video"]:
        torch.testing.assert_close(encoded, fx["frames_alone"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", ["ms_sl", "gmmformer"])
def test_single_video_and_single_query_batches_work(backbone, one_thread):
    """The public code squeezes these dimensions away and crashes; here they give the same rows."""
    model, fx = reference(backbone)
    b = batch_of(fx)
    with torch.no_grad():
        videos = model.encode_videos(b["clip_feats"], b["frame_feats"], b["frame_mask"])
        queries = model.encode_queries(b["query_feats"], b["query_mask"])
        full = model.fuse(*model.score_encoded(queries, videos))
        one_video = model.encode_videos(b["clip_feats"][2:3], b["frame_feats"][2:3, :4], b["frame_mask"][2:3, :4])
        one_query = model.encode_queries(b["query_feats"][1:2], b["query_mask"][1:2])
        single = model.fuse(*model.score_encoded(one_query, one_video))
        out = model({**b, "clip_feats": b["clip_feats"][:1], "frame_feats": b["frame_feats"][:1],
                     "frame_mask": b["frame_mask"][:1], "query_feats": b["query_feats"][:1],
                     "query_mask": b["query_mask"][:1], "labels": torch.tensor([0])})
        total, _ = Objective(loss_config(backbone, fx))(out, hard_negatives=True)
    torch.testing.assert_close(single, full[1:2, 2:3], atol=ATOL, rtol=0)
    assert torch.isfinite(total)


@pytest.mark.parametrize("backbone", ["ms_sl", "gmmformer"])
def test_scores_do_not_depend_on_query_padding(backbone, one_thread):
    model, fx = reference(backbone)
    b = batch_of(fx)
    q, m = F.pad(b["query_feats"], (0, 0, 0, 0)), b["query_mask"]
    with torch.no_grad():
        videos = model.encode_videos(b["clip_feats"], b["frame_feats"], b["frame_mask"])
        a = model.fuse(*model.score_encoded(model.encode_queries(q, m), videos))
        # the same queries with 0 extra... and a batch where each query is padded only to its own length
        rows = [model.fuse(*model.score_encoded(model.encode_queries(q[i:i + 1, :int(m[i].sum())],
                                                                     m[i:i + 1, :int(m[i].sum())]), videos))
                for i in range(len(q))]
    torch.testing.assert_close(torch.cat(rows), a, atol=ATOL, rtol=0)
