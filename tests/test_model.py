"""The model against the authors' outputs (fixtures A and B) and its properties (masks, permutations, gradients)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ralbook.checkpoint import load_reference
from ralbook.config import ModelConfig, preset
from ralbook.losses import Objective
from ralbook.config import LossConfig
from ralbook.model import (RALModel, TransformerLayer, build_model, count_parameters, gaussian_window, masked_max_sim,
                           support_sets)

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-5


def _config_from_reference(c: dict) -> ModelConfig:
    return ModelConfig(visual_dim=c["visual_input_size"], text_dim=c["query_input_size"], hidden_size=c["hidden_size"],
                       n_heads=c["n_heads"], sft_factor=c["sft_factor"], input_drop=c["input_drop"], drop=c["drop"])


def _reference_model(name: str) -> tuple[RALModel, dict]:
    fixture = torch.load(FIXTURES / name)
    model = build_model(_config_from_reference(fixture["config"]))
    load_reference(model, fixture["state_dict"])
    return model.eval(), fixture


@pytest.fixture(scope="module")
def ref_a():
    torch.set_num_threads(1)
    return _reference_model("fixture_A.pt")


@pytest.mark.parametrize("name", ["fixture_A.pt", "fixture_B.pt"])
def test_encoders_and_scores_match_reference(name):
    model, fx = _reference_model(name)
    i, o = fx["inputs"], fx["outputs"]
    with torch.no_grad():
        videos = model.encode_videos(i["clip_video_features"], i["frame_video_features"], i["videos_mask"])
        queries = model.encode_queries(i["text_feat"], i["text_mask"])
        clip, frame = model.score_encoded(queries, videos)
        clip_raw, frame_raw = model.score_encoded(queries, videos, normalized=False)
    torch.testing.assert_close(videos.frames, o["encoded_frame_feat"], atol=ATOL, rtol=0)
    torch.testing.assert_close(videos.clips, o["encoded_clip_feat"], atol=ATOL, rtol=0)
    torch.testing.assert_close(queries.pooled, o["video_query"], atol=ATOL, rtol=0)
    # word tokens: the public code's values at padded positions are never used; ours are exactly 0 there
    valid = i["text_mask"].unsqueeze(-1) > 0
    torch.testing.assert_close(queries.words * valid, o["frame_query_tokens"] * valid, atol=ATOL, rtol=0)
    assert queries.words.masked_select(~valid).abs().max() == 0
    torch.testing.assert_close(clip, o["clip_scale_scores"], atol=ATOL, rtol=0)
    torch.testing.assert_close(frame, o["frame_scale_scores"], atol=ATOL, rtol=0)
    torch.testing.assert_close(clip_raw, o["clip_scale_scores_unnorm"], atol=ATOL, rtol=0)
    torch.testing.assert_close(frame_raw, o["frame_scale_scores_unnorm"], atol=ATOL, rtol=0)
    # padded frames are exactly zero
    assert (videos.frames[i["videos_mask"] == 0] == 0).all()


def test_word_weights_match_reference(ref_a):
    model, fx = ref_a
    i, o = fx["inputs"], fx["outputs"]
    with torch.no_grad():
        g = model.word_confidence(i["text_feat"], i["text_mask"])
        q = model.encode_queries(i["text_feat"], i["text_mask"])
        g_raw = model._word_weights(q.words, q.mask)
    torch.testing.assert_close(g, o["word_weights"], atol=ATOL, rtol=0)
    torch.testing.assert_close(g_raw, o["word_weights_unnorm"], atol=ATOL, rtol=0)
    assert (g[i["text_mask"] == 0] == 0).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(len(g)))


def test_mean_and_sigma_heads_match_reference(ref_a):
    model, fx = ref_a
    i, o = fx["inputs"], fx["outputs"]
    with torch.no_grad():
        for side in ("video", "text"):
            pooled, tokens = i[f"pie_{side}_pooled"], i[f"pie_{side}_tokens"]
            mean = getattr(model, f"{side}_mean")(pooled, tokens)
            sigma = getattr(model, f"{side}_sigma")(pooled, tokens)
            torch.testing.assert_close(mean["mu"], o[f"pie_{side}_mean"], atol=ATOL, rtol=0)
            torch.testing.assert_close(mean["out"], o[f"pie_{side}_out"], atol=ATOL, rtol=0)
            torch.testing.assert_close(mean["attn"], o[f"pie_{side}_attn"], atol=ATOL, rtol=0)
            torch.testing.assert_close(mean["residual"], o[f"pie_{side}_residual"], atol=ATOL, rtol=0)
            torch.testing.assert_close(sigma["log_sigma"], o[f"uncertain_{side}_logsigma"], atol=ATOL, rtol=0)
            torch.testing.assert_close(sigma["attn"], o[f"uncertain_{side}_attn"], atol=ATOL, rtol=0)


def test_short_frame_input_is_padded_inside(ref_a):
    model, fx = ref_a
    i, e = fx["inputs"], fx["extras"]
    ls = e["short_frame_len"]
    with torch.no_grad():
        v = model.encode_videos(i["clip_video_features"], i["frame_video_features"][:, :ls], i["videos_mask"][:, :ls])
        q = model.encode_queries(i["text_feat"], i["text_mask"])
        frame = model.frame_scores(q, v)
    torch.testing.assert_close(v.frames, e["encoded_frame_feat_short_input"], atol=ATOL, rtol=0)
    torch.testing.assert_close(v.clips, e["encoded_clip_feat_short_input"], atol=ATOL, rtol=0)
    torch.testing.assert_close(frame, fx["outputs"]["frame_scale_scores"], atol=ATOL, rtol=0)
    assert v.mask.shape == (4, 128)


def test_support_set_pooling_and_unmasked_heads_match_reference(ref_a):
    """Pooled support sets equal the public code's; its unmasked PIE reproduces from ours when fed its tensors."""
    model, fx = ref_a
    i, o, e = fx["inputs"], fx["outputs"], fx["extras"]
    labels = torch.tensor(i["text_labels"])
    tokens, mask = support_sets(o["frame_query_tokens"], i["text_mask"], labels, 4)
    pooled = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(pooled, e["support_query_pooled"], atol=ATOL, rtol=0)
    assert mask.sum(1).tolist() == [sum(i["query_lengths"][q] for q in qs) for qs in fx["label_dict"].values()]
    with torch.no_grad():  # without masks our heads compute what the public code computes (informative values)
        mu = model.text_mean(e["support_query_pooled"], e["support_query"])["mu"]
        vmu = model.video_mean(e["visual_pooled"], o["encoded_frame_feat"])["mu"]
    torch.testing.assert_close(mu, e["prob_text_mean"], atol=ATOL, rtol=0)
    torch.testing.assert_close(vmu, e["prob_video_mean"], atol=ATOL, rtol=0)


def test_forward_proxies_follow_reference_rng_order(ref_a):
    """Given the public code's distributions, our sampling (text first, then video) reproduces its losses."""
    from ralbook.losses import distribution_alignment, proxy_matching
    from ralbook.model import sample_proxies
    model, fx = ref_a
    e = fx["extras"]
    torch.manual_seed(e["forward_seed"])
    text = sample_proxies(e["prob_text_mean"], e["prob_text_logsigma"], 6)
    video = sample_proxies(e["prob_video_mean"], e["prob_video_logsigma"], 6)
    torch.testing.assert_close(proxy_matching(video, text), e["forward_MIL_loss"], atol=ATOL, rtol=0)
    torch.testing.assert_close(distribution_alignment(video, e["prob_video_logsigma"], text, e["prob_text_logsigma"]),
                               e["forward_vib_loss"], atol=1e-4, rtol=1e-6)


# ----------------------------------------------------------------------------- properties

def _small_config(**kw) -> ModelConfig:
    base = dict(visual_dim=12, text_dim=10, hidden_size=16, n_heads=2, input_drop=0.0, drop=0.0)
    base.update(kw)
    return ModelConfig(**base)


def _batch(n_queries=(2, 1, 3), frames=(128, 9, 40), lengths=None, seed=0, dv=12, dt=10) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, nq = len(n_queries), sum(n_queries)
    lengths = lengths or [3 + (7 * k) % 20 for k in range(nq)]
    lq = max(lengths)
    frame_feats = torch.randn(b, 128, dv, generator=g)
    frame_mask = torch.zeros(b, 128)
    for k, n in enumerate(frames):
        frame_mask[k, :n] = 1
    query_mask = torch.zeros(nq, lq)
    for k, n in enumerate(lengths):
        query_mask[k, :n] = 1
    return {
        "clip_feats": torch.randn(b, 32, dv, generator=g),
        "frame_feats": frame_feats * frame_mask.unsqueeze(-1),
        "frame_mask": frame_mask,
        "query_feats": torch.randn(nq, lq, dt, generator=g) * query_mask.unsqueeze(-1),
        "query_mask": query_mask,
        "labels": torch.tensor([v for v, n in enumerate(n_queries) for _ in range(n)]),
    }


def _all_outputs(model: RALModel, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        v = model.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        q = model.encode_queries(batch["query_feats"], batch["query_mask"])
        clip, frame = model.score_encoded(q, v)
        clip_raw, frame_raw = model.score_encoded(q, v, normalized=False)
        d = model.distributions(batch)
        g = model.word_confidence(batch["query_feats"], batch["query_mask"])
    return {"frames": v.frames, "clips": v.clips, "pooled": q.pooled,
            "words": q.words * q.mask.unsqueeze(-1), "clip": clip, "frame": frame, "clip_raw": clip_raw,
            "frame_raw": frame_raw, "g": g, "vmu": d.video_mu, "vsig": d.video_log_sigma, "tmu": d.text_mu,
            "tsig": d.text_log_sigma}


def test_padding_content_changes_nothing():
    torch.manual_seed(0)
    model = build_model(_small_config()).eval()
    batch = _batch()
    before = _all_outputs(model, batch)
    noisy = dict(batch)
    noisy["frame_feats"] = batch["frame_feats"] + 5 * torch.randn_like(batch["frame_feats"]) * (1 - batch["frame_mask"]).unsqueeze(-1)
    noisy["query_feats"] = batch["query_feats"] + 5 * torch.randn_like(batch["query_feats"]) * (1 - batch["query_mask"]).unsqueeze(-1)
    after = _all_outputs(model, noisy)
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-5, rtol=0, msg=key)


def test_permuting_videos_permutes_score_columns():
    torch.manual_seed(1)
    model = build_model(_small_config()).eval()
    batch = _batch()
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        q = model.encode_queries(batch["query_feats"], batch["query_mask"])
        v = model.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        vp = model.encode_videos(batch["clip_feats"][perm], batch["frame_feats"][perm], batch["frame_mask"][perm])
        for normalized in (True, False):
            a = model.score_encoded(q, v, normalized)
            b = model.score_encoded(q, vp, normalized)
            for x, y in zip(a, b):
                torch.testing.assert_close(y, x[:, perm], atol=1e-5, rtol=0)


def test_queries_are_scored_independently_of_the_batch():
    torch.manual_seed(2)
    model = build_model(_small_config()).eval()
    batch = _batch()
    with torch.no_grad():
        v = model.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        full = model.score(batch["query_feats"], batch["query_mask"], v)
        one = model.score(batch["query_feats"][3:4], batch["query_mask"][3:4], v)  # a single query works
    for x, y in zip(full, one):
        torch.testing.assert_close(y, x[3:4], atol=1e-5, rtol=0)
        assert y.shape == (1, 3)


def _loss_and_grads(model: RALModel, batch: dict, hard: bool = True):
    model.zero_grad()
    total, parts = Objective(LossConfig(hard_pool_size=2))(model(batch), hard_negatives=hard)
    total.backward()
    return total, parts, {n: p.grad for n, p in model.named_parameters()}


def test_every_parameter_learns_with_all_switches_on():
    torch.manual_seed(3)
    model = build_model(_small_config()).train()
    total, parts, grads = _loss_and_grads(model, _batch())
    assert torch.isfinite(total)
    dead = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or g.abs().sum() == 0]
    # the key bias of the single-token summary attention shifts every logit of a softmax equally: its
    # gradient is exactly 0 (in the public code only rounding noise), so it is not used at all
    assert dead == ["clip_encoder.summary.attn.k.bias", "frame_encoder.summary.attn.k.bias"]
    assert set(parts) == {"clip_nce", "frame_nce", "clip_triplet", "frame_triplet", "query_diversity",
                          "proxy_matching", "distribution_alignment", "optimal_transport"}


def test_msra_switch_removes_proxies_and_their_losses():
    torch.manual_seed(4)
    model = build_model(_small_config(msra=False)).train()
    _, parts, grads = _loss_and_grads(model, _batch())
    assert "proxy_matching" not in parts and "distribution_alignment" not in parts
    for name, g in grads.items():
        if name.startswith(("video_mean", "video_sigma", "text_mean", "text_sigma")):
            assert g is None


def test_csa_switch_gives_the_gmmformer_v2_frame_score():
    torch.manual_seed(5)
    model = build_model(_small_config(csa=False)).eval()
    batch = _batch()
    with torch.no_grad():
        v = model.encode_videos(batch["clip_feats"], batch["frame_feats"], batch["frame_mask"])
        q = model.encode_queries(batch["query_feats"], batch["query_mask"])
        frame = model.frame_scores(q, v)
        cos = F.normalize(q.pooled, dim=-1) @ F.normalize(v.frames, dim=-1).transpose(1, 2)  # (Nv, Nq, Lf)
        expected = cos.max(dim=-1).values.t()
    torch.testing.assert_close(frame, expected, atol=1e-6, rtol=0)
    # word encoder and confidence MLP get no gradient from the scores when CSA is off
    model.train()
    _, _, grads = _loss_and_grads(model, batch)
    assert grads["word_confidence_mlp.0.weight"] is None


def test_word_confidence_switch_gives_uniform_weights():
    torch.manual_seed(6)
    model = build_model(_small_config(word_confidence=False)).eval()
    batch = _batch()
    with torch.no_grad():
        g = model.word_confidence(batch["query_feats"], batch["query_mask"])
    expected = batch["query_mask"] / batch["query_mask"].sum(-1, keepdim=True)
    torch.testing.assert_close(g, expected)


def test_inputs_the_public_code_crashes_on():
    torch.manual_seed(7)
    model = build_model(_small_config()).train()
    # every video has one query (their OT term stacks an empty list)
    total, parts, _ = _loss_and_grads(model, _batch(n_queries=(1, 1, 1)))
    assert torch.isfinite(total) and float(parts["optimal_transport"].detach()) == 0.0
    # a video with more than 26 queries (their support set has 26 slots)
    batch = _batch(n_queries=(30, 2), frames=(50, 128), lengths=[5 + k % 20 for k in range(32)])
    total, _, _ = _loss_and_grads(model, batch)
    assert torch.isfinite(total)
    d = model.distributions(batch)
    assert d.text_mu.shape == (2, 16)


@pytest.mark.parametrize("chunk_elements", [1, 100, 1 << 24])
def test_masked_max_sim_gradient_matches_dense_autograd(chunk_elements, monkeypatch):
    monkeypatch.setattr("ralbook.model.scoring.MAX_SIM_CHUNK_ELEMENTS", chunk_elements)  # 1 query per chunk .. all at once
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    am = torch.tensor([[1, 1, 1, 0]] * 5, dtype=torch.float64)
    bm = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float64)
    w = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    dense = torch.einsum("qtd,vfd->qvtf", a, b) * am[:, None, :, None] * bm[None, :, None, :]
    (dense.max(-1).values * w).sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    out = masked_max_sim(a, am, b, bm)
    torch.testing.assert_close(out, dense.max(-1).values)
    (out * w).sum().backward()
    torch.testing.assert_close(a.grad, ga)
    torch.testing.assert_close(b.grad, gb)
    assert torch.autograd.gradcheck(lambda x, y: masked_max_sim(x, am, y, bm), (a, b))


def test_gaussian_window_properties():
    w = gaussian_window(32, 0.5)
    assert w.shape == (32, 32)
    torch.testing.assert_close(w.max(dim=-1).values, torch.ones(32))
    narrow, wide = gaussian_window(32, 0.1), gaussian_window(32, 10.0)
    assert narrow[5].sum() < w[5].sum() < wide[5].sum()  # wider windows keep more of the distant logits
    assert (w >= 0).all() and (w <= 1).all()
    # element-wise from the formula of docs/method.md#building-blocks
    import math
    length, width = 10, 3.0
    s = width / 9
    raw = [[math.exp(-((j / (length - 1) - i / length) ** 2) / (2 * s * s)) / s * 0.3989422804014327
            for j in range(length)] for i in range(length)]
    expected = torch.tensor([[x / max(row) for x in row] for row in raw])
    torch.testing.assert_close(gaussian_window(length, width), expected)
    # short lengths with the narrowest window: no row underflows to 0/0
    for length in (2, 4, 5, 8):
        tiny = gaussian_window(length, 0.1)
        assert torch.isfinite(tiny).all()
        torch.testing.assert_close(tiny.max(dim=-1).values, torch.ones(length))


def test_windows_are_buffers_not_parameters():
    model = build_model(_small_config())
    assert not any("window" in n for n in model.state_dict())
    assert sum(1 for n, _ in model.named_buffers() if n.endswith("window")) == 14  # 7 windowed branches x 2 blocks


def test_tvr_model_has_the_reference_keys_and_shapes(capsys):
    cfg = preset("tvr").model
    model = build_model(cfg)
    from ralbook.checkpoint import reference_to_ralbook_key
    rows = [line.split("\t") for line in (FIXTURES / "reference_keys_tvr.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    expected = {reference_to_ralbook_key(k): tuple(int(s) for s in shape.split("x")) for k, shape, _ in rows}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == expected
    assert len(own) == 343
    n = count_parameters(model)
    assert n == sum(int(r[2]) for r in rows)
    print(f"TVR configuration: {len(own)} tensors, {n:,} parameters")
    assert "35,529,377" in capsys.readouterr().out


def test_branch_checkpointing_gives_the_same_loss_and_gradients():
    batch = _batch()
    results = []
    for flag in (False, True):
        torch.manual_seed(8)
        model = build_model(_small_config(checkpoint_branches=flag, drop=0.1, input_drop=0.1)).train()
        torch.manual_seed(9)
        total, _, grads = _loss_and_grads(model, batch)
        results.append((total.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_trimming_padding_keeps_masked_max_semantics():
    """All-negative similarities: a video with padding scores 0 (its padded frame), one without keeps its max."""
    a = -torch.ones(2, 5, 3)
    a_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    b = torch.ones(2, 6, 3)
    b_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    out = masked_max_sim(a, a_mask, b, b_mask)
    assert out.shape == (2, 2, 5)
    expected = torch.zeros(2, 2, 5)
    expected[0, 1, :2] = -3.0
    expected[1, 1, :1] = -3.0
    torch.testing.assert_close(out, expected)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 5, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    dense = torch.einsum("qtd,vfd->qvtf", a * a_mask.repeat(2, 1)[..., None], b * b_mask[..., None]).max(-1).values
    torch.testing.assert_close(masked_max_sim(a, a_mask.repeat(2, 1), b, b_mask), dense)


def test_training_step_runs_under_bf16_autocast_on_cpu():
    torch.manual_seed(10)
    model = build_model(_small_config()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_batch())
        total, _ = Objective(LossConfig())(out, hard_negatives=False)
    total.float().backward()
    assert torch.isfinite(total.float())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("with_mask", [False, True])
def test_single_query_summary_equals_the_generic_layer(with_mask):
    """TransformerLayer.summarise (keys never projected) == forward on the expanded token, values and gradients."""
    torch.manual_seed(0)
    layer = TransformerLayer(16, 4, 0.0, ffn_mult=1).double()
    for prm in layer.parameters():
        torch.nn.init.normal_(prm, std=0.3)
    token = torch.randn(1, 1, 16, dtype=torch.float64)
    keys = torch.randn(5, 7, 16, dtype=torch.float64)
    mask = (torch.arange(7)[None] < torch.tensor([7, 3, 1, 5, 6])[:, None]).double() if with_mask else None

    def run(fn):
        layer.zero_grad()
        k = keys.clone().requires_grad_(True)
        out = fn(k)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out, k.grad, {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}

    fast, fast_gk, fast_g = run(lambda k: layer.summarise(token, k, mask))
    slow, slow_gk, slow_g = run(lambda k: layer(token.expand(5, 1, 16), mask, keys=k)[:, 0])
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(fast_gk, slow_gk)
    assert set(slow_g) - set(fast_g) == {"attn.k.bias"}
    torch.testing.assert_close(slow_g["attn.k.bias"], torch.zeros(16, dtype=torch.float64))
    for name, g in fast_g.items():
        torch.testing.assert_close(g, slow_g[name], msg=name)


def test_cpu_dropout_keeps_the_expected_share_and_mean():
    from ralbook.model import Dropout

    layer = Dropout(0.2).train()
    torch.manual_seed(0)
    x = torch.ones(200_001, dtype=torch.float64, requires_grad=True)  # odd size: not a multiple of 4
    y = layer(x)
    keep = y != 0
    assert abs(keep.double().mean().item() - 0.8) < 0.004  # 0.8 +- 4.5 standard deviations
    assert torch.allclose(y[keep], torch.full_like(y[keep], 32768 / (32768 - 6554)))
    assert abs(y.mean().item() - 1.0) < 0.006  # E[out] = x
    y.backward(torch.arange(200_001, dtype=torch.float64))
    torch.testing.assert_close(x.grad, torch.where(keep, torch.arange(200_001.0, dtype=torch.float64) * y.detach(), 0.0))
    # the mask is reproducible from torch's seed, differs between draws, and eval mode is the identity
    torch.manual_seed(0)
    torch.testing.assert_close(layer(x), y)
    assert not torch.equal(layer(x) != 0, keep)
    assert layer.eval()(x) is x
    # probabilities within 2**-16 of 0 or 1 fall back to torch's dropout instead of dividing by zero
    assert Dropout(0.99999).train()(torch.ones(1000)).abs().sum() < 1000 * 1e5
    assert torch.equal(Dropout(1.0).train()(torch.ones(10)), torch.zeros(10))
    # 16-bit slices of the 64-bit draws: each position in a draw is unbiased (none always kept or dropped)
    share = (layer.train()(torch.ones(4 * 50_000)) != 0).view(-1, 4).double().mean(0)
    assert ((share - 0.8).abs() < 0.01).all()


def test_fused_relu_dropout_equals_relu_then_the_same_mask():
    from ralbook.model import Dropout

    layer = Dropout(0.3).train()
    x = torch.randn(1001, 7, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    plain = layer(x)  # the mask of this draw, applied to x itself
    torch.manual_seed(5)
    fused = layer(x, relu=True)  # same draw: same mask, after the ReLU
    torch.testing.assert_close(fused, torch.relu(plain))
    upstream = torch.randn_like(x)
    fused.backward(upstream)
    scale = 32768 / (32768 - round(0.3 * 32768))
    expected = upstream * ((plain != 0) & (x > 0)).double() * scale
    torch.testing.assert_close(x.grad, expected)
    assert torch.equal(layer.eval()(x, relu=True), torch.relu(x))


def test_masked_max_sim_without_a_mask_reads_a_as_already_masked():
    torch.manual_seed(0)
    a, b = torch.randn(3, 5, 8), torch.randn(4, 6, 8)
    a_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    b_mask = (torch.arange(6) < torch.tensor([6, 2, 4, 6]).unsqueeze(1)).float()
    torch.testing.assert_close(masked_max_sim(a * a_mask.unsqueeze(-1), None, b, b_mask),
                               masked_max_sim(a, a_mask, b, b_mask))
