"""ralbook.analysis on synthetic arrays: every number checked against a hand or brute-force computation."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ralbook.studies import analysis as A


def brute_force_auc(pos, neg) -> float:
    """Definition: average over all (positive, negative) pairs of 1 if pos > neg, 0.5 if equal, else 0."""
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


# ----------------------------------------------------------------------------- AUC


def test_auc_hand_case_with_tie():
    # pairs: 3>1, 3>2, 2>1 count 1 each; 2==2 counts 0.5 -> 3.5 / 4
    assert A.auc([3, 2], [1, 2]) == pytest.approx(0.875)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 5, size=rng.integers(1, 30))
    neg = rng.integers(0, 5, size=rng.integers(1, 30))
    assert A.auc(pos, neg) == pytest.approx(brute_force_auc(pos, neg))
    # swapping the groups mirrors the AUC
    assert A.auc(pos, neg) + A.auc(neg, pos) == pytest.approx(1.0)


def test_auc_extremes_and_labels():
    assert A.auc([5, 6], [1, 2, 3]) == 1.0
    assert A.auc([1], [5, 6]) == 0.0
    assert A.auc([2, 2], [2]) == 0.5
    scores = np.array([0.9, 0.1, 0.8, 0.3])
    labels = np.array([True, False, False, True])
    assert A.auc_from_labels(scores, labels) == pytest.approx(brute_force_auc([0.9, 0.3], [0.1, 0.8]))


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        A.auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        A.auc([np.nan], [1.0])
    with pytest.raises(ValueError, match="entries"):
        A.auc_from_labels(np.zeros(3), np.zeros(4, dtype=bool))


# ----------------------------------------------------------------------------- summaries


def test_describe_and_groups():
    d = A.describe([1.0, 2.0, 3.0, 4.0])
    assert d["n"] == 4 and d["mean"] == 2.5 and d["median"] == 2.5
    assert d["std"] == pytest.approx(math.sqrt(1.25))
    assert math.isnan(A.describe([])["mean"])
    by = A.describe_by_group(np.array([1.0, 3.0, 10.0]), ["b", "b", "a"])
    assert list(by) == ["a", "b"] and by["b"]["mean"] == 2.0 and by["a"]["n"] == 1


def test_spearman_matches_scipy_and_handles_constants():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 50)
    y = x + rng.normal(0, 2, 50)
    assert A.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert math.isnan(A.spearman(np.ones(5), np.arange(5)))


def test_binned_means_hand_case():
    keys, means, sems = A.binned_means(np.array([2, 1, 2, 1, 3]), np.array([4.0, 1.0, 6.0, 3.0, 7.0]))
    assert keys.tolist() == [1, 2, 3]
    assert means.tolist() == [2.0, 5.0, 7.0]
    # x == 1: values 1, 3 -> std 1, s.e. 1 / sqrt(2)
    assert sems[0] == pytest.approx(1 / math.sqrt(2)) and sems[2] == 0.0


def test_sigma_summary_is_geometric_mean():
    log_sigma = torch.tensor([[0.0, math.log(4.0)], [math.log(3.0), math.log(3.0)]])
    # exp((0 + log 4) / 2) = 2; constant log 3 -> 3
    assert A.sigma_summary(log_sigma) == pytest.approx([2.0, 3.0])
    assert A.sigma_summary(log_sigma.numpy()) == pytest.approx([2.0, 3.0])
    with pytest.raises(ValueError, match="shape"):
        A.sigma_summary(np.zeros(3))


# ----------------------------------------------------------------------------- projection


def test_pca_recovers_a_line_and_matches_torch():
    rng = np.random.default_rng(1)
    t = rng.normal(size=40)
    direction = A._as_numpy(torch.nn.functional.normalize(torch.randn(6, generator=torch.Generator().manual_seed(0)),
                                                          dim=0))
    points = 3.0 + t[:, None] * direction[None, :] + 1e-3 * rng.normal(size=(40, 6))
    proj = A.fit_pca(points)
    assert proj.explained_variance_ratio[0] > 0.999
    np.testing.assert_allclose(proj.components @ proj.components.T, np.eye(2), atol=1e-10)
    coords = proj.transform(points)
    # the first coordinate is the line parameter (centred), up to sign
    assert abs(np.corrcoef(coords[:, 0], t)[0, 1]) > 0.9999
    np.testing.assert_allclose(proj.transform(proj.mean[None]), 0.0, atol=1e-12)
    # same subspace as torch.pca_lowrank (signs may differ)
    _, _, v = torch.pca_lowrank(torch.tensor(points), q=2, center=True)
    np.testing.assert_allclose(np.abs(v[:, 0].numpy()), np.abs(proj.components[0]), atol=1e-6)


def test_pca_sign_is_deterministic_and_errors():
    x = np.random.default_rng(2).normal(size=(10, 4))
    a, b = A.fit_pca(x), A.fit_pca(-x * 1.0 + 0.0)
    # each axis has its largest loading positive whatever the data's orientation
    for comps in (a.components, b.components):
        assert np.all(comps[np.arange(2), np.abs(comps).argmax(axis=1)] > 0)
    with pytest.raises(ValueError, match="at least 2"):
        A.fit_pca(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="dims"):
        a.transform(np.zeros((2, 5)))


def test_sample_gaussian_statistics_and_seed():
    mu = torch.tensor([[1.0, -2.0]])
    log_sigma = torch.log(torch.tensor([[0.5, 2.0]]))
    z = A.sample_gaussian(mu, log_sigma, k=20000, seed=3)
    assert z.shape == (1, 20000, 2)
    np.testing.assert_allclose(z[0].mean(0).numpy(), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(z[0].std(0).numpy(), [0.5, 2.0], rtol=0.03)
    assert torch.equal(A.sample_gaussian(mu, log_sigma, 4, seed=3), A.sample_gaussian(mu, log_sigma, 4, seed=3))


# ----------------------------------------------------------------------------- ranks and examples


def test_rank_histogram_hand_case():
    ranks = np.array([1, 1, 2, 5, 6, 10, 11, 50, 51, 100, 101, 500])
    labels, counts = A.rank_histogram(ranks)
    assert labels == ["1", "2-5", "6-10", "11-50", "51-100", ">100"]
    assert counts.tolist() == [2, 2, 2, 2, 2, 2]
    labels, counts = A.rank_histogram(np.array([1, 3, 4]), edges=(1, 3))
    assert labels == ["1-2", ">2"] and counts.tolist() == [1, 2]
    with pytest.raises(ValueError, match="1-based"):
        A.rank_histogram(np.array([0, 1]))
    with pytest.raises(ValueError, match="increasing"):
        A.rank_histogram(np.array([1]), edges=(1, 5, 3))


@pytest.mark.parametrize("seed", range(3))
def test_rank_histogram_counts_sum_to_n(seed):
    ranks = np.random.default_rng(seed).integers(1, 300, size=77)
    assert A.rank_histogram(ranks)[1].sum() == 77


def test_select_examples():
    ranks = np.array([1, 7, 1, 1, 30, 2, 30, 1])
    ok = A.select_examples(ranks, 2, "success", seed=0)
    assert len(ok) == 2 and np.all(ranks[ok] == 1)
    assert np.array_equal(ok, A.select_examples(ranks, 2, "success", seed=0))
    assert A.select_examples(ranks, 10, "success").tolist() == [0, 2, 3, 7]
    # worst first, ties by index; rank-1 queries are never failures
    assert A.select_examples(ranks, 3, "failure").tolist() == [4, 6, 1]
    assert A.select_examples(ranks, 10, "failure").tolist() == [4, 6, 1, 5]
    with pytest.raises(ValueError, match="kind"):
        A.select_examples(ranks, 1, "median")


# ----------------------------------------------------------------------------- word confidence


def test_relative_confidence_uniform_is_one():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    g = mask / mask.sum(1, keepdim=True)
    rel = A.relative_confidence(g, mask)
    np.testing.assert_allclose(rel, mask.numpy())
    with pytest.raises(ValueError, match="shape"):
        A.relative_confidence(g, mask[:, :3])


def test_filler_content_split_and_per_query_auc():
    values = np.array([[0.1, 0.5, 0.2, 0.9], [0.3, 0.3, 0.0, 0.0], [0.7, 0.2, 0.1, 0.0]])
    words = [["the", "person", "a", "ball"], ["then", "jumps"], ["runs", "kite"]]
    fillers = {"the", "a", "then"}
    filler, content = A.split_by_word_class(values, words, fillers)
    assert sorted(filler.tolist()) == [0.1, 0.2, 0.3]
    assert sorted(content.tolist()) == [0.2, 0.3, 0.5, 0.7, 0.9]
    per_query = A.per_query_filler_auc(values, words, fillers)
    # query 0: content {0.5, 0.9} vs filler {0.1, 0.2} -> 1; query 1: 0.3 vs 0.3 tie -> 0.5; query 2: no filler
    assert per_query[0] == 1.0 and per_query[1] == 0.5 and math.isnan(per_query[2])
    with pytest.raises(ValueError, match="queries"):
        A.split_by_word_class(values, words[:2], fillers)


def spec_bin_centres(n: int, k: int) -> np.ndarray:
    """Mean raw index of the frames averaged into each of k bins, by the docs/method.md#inputs rule written out."""
    edges = [min(int(np.round(i * n / k)), n - 1) for i in range(k + 1)]  # np.round: half to even
    return np.array([np.mean(range(edges[i], edges[i + 1])) if edges[i] < edges[i + 1] else edges[i]
                     for i in range(k)])


def test_frame_span_to_rows_short_videos_keep_rows():
    assert A.frame_span_to_rows((3, 9), 20) == (3.0, 9.0)
    # 256 frames into 128 rows: row i averages frames 2i and 2i+1 (centre 2i + 0.5)
    assert A.frame_span_to_rows((0, 128), 256) == (0.0, 64.0)
    with pytest.raises(ValueError, match="inside"):
        A.frame_span_to_rows((5, 30), 20)


@pytest.mark.parametrize("n", [129, 171, 200, 513])
def test_frame_span_to_rows_binned_videos(n):
    rng = np.random.default_rng(n)
    centres = spec_bin_centres(n, 128)
    for _ in range(20):
        start = int(rng.integers(0, n - 2))
        end = int(rng.integers(start + 1, n + 1))
        lo, hi = A.frame_span_to_rows((start, end), n)
        inside = np.flatnonzero((centres >= start) & (centres <= end - 1))
        if inside.size:
            assert (lo, hi) == (inside[0], inside[-1] + 1)
        else:  # narrower than a bin: one row, the one nearest the span's centre
            assert hi - lo == 1


def test_batched_and_optional_float():
    assert [list(b) for b in A.batched(list(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        list(A.batched([1], 0))
    assert A.optional_float(float("nan")) is None and A.optional_float(2) == 2.0


# ----------------------------------------------------------------------------- model probes (tiny model)


@pytest.fixture(scope="module")
def tiny_model():
    from ralbook.config import ModelConfig
    from ralbook.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(visual_dim=12, text_dim=10, hidden_size=16, n_heads=2, input_drop=0.0, drop=0.0)
    return build_model(cfg).eval()


def _query(n_words: int, total: int, dim: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(1, total, dim)
    feats[0, :n_words] = torch.nn.functional.normalize(torch.randn(n_words, dim, generator=g), dim=-1)
    mask = torch.zeros(1, total)
    mask[0, :n_words] = 1
    return feats, mask


def _video(n_frames: int, dim: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    clips = torch.nn.functional.normalize(torch.randn(1, 32, dim, generator=g), dim=-1)
    frames = torch.zeros(1, 128, dim)
    frames[0, :n_frames] = torch.nn.functional.normalize(torch.randn(n_frames, dim, generator=g), dim=-1)
    mask = torch.zeros(1, 128)
    mask[0, :n_frames] = 1
    return clips, frames, mask


def test_word_frame_similarity_reproduces_the_frame_score(tiny_model):
    qf, qm = _query(5, 7)
    clips, frames, fmask = _video(40)
    sim = A.word_frame_similarity(tiny_model, qf, qm, clips, frames, fmask)
    assert sim.shape == (5, 40)
    assert np.all(np.abs(sim) <= 1 + 1e-5)
    with torch.no_grad():
        g = tiny_model.word_confidence(qf, qm)[0, :5].numpy()
        videos = tiny_model.encode_videos(clips, frames, fmask)
        _, frame_score = tiny_model.score(qf, qm, videos)
    # docs/method.md#csa-confidence-aware-set-to-set-alignment: S_f = sum_t g_t max_f <w_t, f_f> (all frames valid here, so no zero from padding enters)
    assert float((g * sim.max(axis=1)).sum()) == pytest.approx(float(frame_score[0, 0]), abs=1e-5)


def test_query_sigmas_equal_singleton_support_sets(tiny_model):
    qa, ma = _query(4, 6, seed=2)
    qb, mb = _query(6, 6, seed=3)
    feats, mask = torch.cat([qa, qb]), torch.cat([ma, mb])
    both = A.query_sigmas(tiny_model, feats, mask)
    alone = A.query_sigmas(tiny_model, qa[:, :4], ma[:, :4])
    assert both.shape == (2, 16)
    # a query's sigma must not depend on which other queries share its batch, nor on its padding
    torch.testing.assert_close(both[0], alone[0], atol=1e-5, rtol=1e-5)
    # and it is the text distribution of the one-query support set
    with torch.no_grad():
        q = tiny_model.encode_queries(qb, mb)
        ref = tiny_model.text_distribution(q, torch.tensor([0]), 1)["log_sigma"]
    torch.testing.assert_close(both[1], ref[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- probes over a collection


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A generated demo collection of a few videos and a small untrained model for it."""
    from micro import micro_model
    from ralbook.data.demo import load_ground_truth

    root = tmp_path_factory.mktemp("micro")
    coll, model = micro_model(root, n_test=6, seed=1)
    return coll, model, load_ground_truth(root, "demo")


def test_collect_word_confidence_matches_one_query_at_a_time(micro):
    from ralbook.data.datasets import QueryDataset, collate_queries

    coll, model, _ = micro
    caps = [c for c, _ in coll.captions("test")]
    conf, mask = A.collect_word_confidence(model, coll, caps, batch_size=5, progress=False)
    assert conf.shape == mask.shape and conf.shape[0] == len(caps)
    for i, cap in enumerate(caps):
        n = coll.n_tokens(cap)
        assert mask[i].sum() == n and np.all(conf[i, n:] == 0)
        q = collate_queries([QueryDataset(coll, [cap])[0]])
        with torch.no_grad():
            alone = model.word_confidence(q["query_feats"], q["query_mask"])[0].numpy()
        np.testing.assert_allclose(conf[i, :n], alone, atol=1e-6)
        assert conf[i].sum() == pytest.approx(1.0, abs=1e-5)


def test_collect_distributions_matches_the_model_on_one_batch(micro):
    from ralbook.data.datasets import TrainDataset, collate_train

    coll, model, _ = micro
    videos = coll.videos("test")
    dist = A.collect_distributions(model, coll, videos, "test", batch_size=4, progress=False)
    ds = TrainDataset(coll, videos, split="test")
    batch = collate_train([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        ref = model.distributions(batch)
    torch.testing.assert_close(dist.video_log_sigma, ref.video_log_sigma, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist.support_log_sigma, ref.text_log_sigma, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist.support_mu, ref.text_mu, atol=1e-5, rtol=1e-5)
    assert dist.cap_ids == batch["cap_ids"]
    assert [dist.video_ids[j] for j in dist.query_video] == [coll.video_of(c) for c in dist.cap_ids]
    assert dist.query_length.tolist() == [coll.n_tokens(c) for c in dist.cap_ids]
    with torch.no_grad():
        single = A.query_sigmas(model, batch["query_feats"], batch["query_mask"])
    torch.testing.assert_close(dist.query_log_sigma, single, atol=1e-5, rtol=1e-5)


def test_moment_hit_rates_batched_equals_one_by_one(micro):
    coll, model, truth = micro
    caps = [c for c, _ in coll.captions("test")][:6]
    fillers = {w for w, t in truth.word_types.items() if t == "filler"}
    got = A.moment_hit_rates(model, coll, caps + ["not#a#caption"], truth, fillers, batch_size=4)
    hits = {"content": [], "filler": []}
    chance = []
    for cap in caps:
        sim = A.query_video_similarity(model, coll, cap)
        gt = truth.captions[cap]
        lo, hi = A.frame_span_to_rows((gt.start, gt.end), sim["n_raw_frames"])
        best = sim["similarity"].argmax(axis=1)
        for t, word in enumerate(gt.words):
            hits["filler" if word in fillers else "content"].append(lo <= best[t] < hi)
        chance.append((hi - lo) / sim["similarity"].shape[1])
    assert got["n_captions"] == len(caps)
    assert got["content_hit_rate"] == pytest.approx(np.mean(hits["content"]))
    assert got["filler_hit_rate"] == pytest.approx(np.mean(hits["filler"]))
    assert got["chance"] == pytest.approx(np.mean(chance))


def test_projection_points_layout(micro):
    coll, model, _ = micro
    videos = coll.videos("test")
    dist = A.collect_distributions(model, coll, videos, "test", progress=False)
    pts = A.projection_points(dist, [0, 2], n_samples=4, seed=0)
    n_means = 2 + sum(int((dist.query_video == v).sum()) for v in (0, 2))
    assert pts["means"].shape == (n_means, 2) and pts["proxies"].shape == (4 * n_means, 2)
    assert pts["mean_kind"].count("video") == 2 and pts["owner_names"] == [videos[0], videos[2]]
    assert len(pts["proxy_owner"]) == len(pts["proxy_kind"]) == 4 * n_means


def test_values_by_word_type():
    values = np.array([[0.5, 1.5, 1.0], [2.0, 0.0, 0.0]])
    got = A.values_by_word_type(values, [["the", "red", "ball"], ["Ball"]], {"the": "filler", "red": "specific"})
    assert {k: v.tolist() for k, v in got.items()} == {"filler": [0.5], "specific": [1.5], "unknown": [1.0, 2.0]}


def test_training_history_and_example_rows():
    records = [{"epoch": 0, "loss": {"total": 3.0, "a": 1.0}, "val": {"fused": {"SumR": 10.0}}},
               {"epoch": 1, "loss": {"total": 2.0, "a": 0.5, "b": 0.1}, "val": {"fused": {"SumR": 20.0}}}]
    epochs, losses, sumr = A.training_history(records)
    assert epochs == [0, 1] and sumr == [10.0, 20.0]
    assert losses["a"] == [1.0, 0.5] and math.isnan(losses["b"][0]) and "total" not in losses
    rows = A.example_rows([1], np.array([1, 3]), [["v1", "v2"], ["v5", "v6", "v2"]], ["v1#enc#0", "v2#enc#0"],
                          {"v2#enc#0": "a caption"}, lambda c: c.split("#")[0], k=3)
    assert rows == [{"cap_id": "v2#enc#0", "caption": "a caption", "video": "v2", "rank": 3,
                     "top-3": "v5 v6 *v2*"}]
