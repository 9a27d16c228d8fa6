"""Evaluation: ranks with the authors' tie rule, recalls, and chunked scoring equal to brute force."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ralbook.config import preset
from ralbook.errors import DataError
from ralbook.retrieval.evaluate import EvalResult, evaluate, format_metrics, rank_encoded
from ralbook.runtime.precision import autocast
from ralbook.retrieval.metrics import ranks_from_scores, read_relevant_file, recall_metrics, relevant_indices, top_indices
from ralbook.runtime.device import resolve_device


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def authors_rank(scores: torch.Tensor, relevant: list[list[int]]) -> list[int]:
    """Brute force in the authors' way: sort the negated scores, position of the best relevant video."""
    out = []
    for s, rel in zip(scores, relevant):
        order = torch.argsort(-s, stable=True).tolist()
        out.append(min([order.index(k) + 1 for k in rel], default=len(s) + 1))
    return out


def padded(rel: list[list[int]]) -> torch.Tensor:
    width = max(max(len(r) for r in rel), 1)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rel], dtype=torch.long)


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_the_authors_sort_including_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n, nv = 40, 23
    scores = torch.randint(0, 4, (n, nv), generator=g).float()  # few distinct values: many ties
    rel = [torch.randperm(nv, generator=g)[: int(torch.randint(0, 4, (1,), generator=g))].tolist() for _ in range(n)]
    got = ranks_from_scores(scores, padded(rel)).tolist()
    assert got == authors_rank(scores, rel)


def test_tie_breaking_by_video_order_hand_case():
    # all scores equal: rank = 1 + index of the ground-truth video
    scores = torch.zeros(3, 5)
    assert ranks_from_scores(scores, torch.tensor([[0], [3], [4]])).tolist() == [1, 4, 5]
    # two relevant videos: the better ranked one counts; none -> Nv + 1
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    assert ranks_from_scores(scores, torch.tensor([[0, 2]])).tolist() == [3]
    assert ranks_from_scores(scores, torch.tensor([[-1, -1]])).tolist() == [5]


def test_recall_metrics_hand_computed():
    # ranks 1, 3, 7, 50, 200 -> R@1 1/5, R@5 2/5, R@10 3/5, R@100 4/5
    m = recall_metrics(np.array([1, 3, 7, 50, 200]))
    assert m == {"R@1": 20.0, "R@5": 40.0, "R@10": 60.0, "R@100": 80.0, "SumR": 200.0}
    with pytest.raises(DataError):
        recall_metrics(np.array([], dtype=int))


def test_top_indices_agree_with_ranks():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (30, 12), generator=g).float()
    top = top_indices(scores, 12)
    for i in range(30):
        for position, video in enumerate(top[i].tolist()):
            assert ranks_from_scores(scores[i:i + 1], torch.tensor([[video]])).item() == position + 1
    assert top_indices(scores, 50).shape == (30, 12)


# ----------------------------------------------------------------------------- chunked scoring

def tiny_model(alpha=0.3, seed=0):
    from ralbook.model import build_model

    torch.manual_seed(seed)
    cfg = preset("demo", model={"hidden_size": 16, "n_heads": 2, "alpha": alpha},
                 data={"visual_dim": 8, "text_dim": 6})
    return build_model(cfg.model).eval()


def random_encodings(model, nq=37, nv=29, seed=1):
    g = torch.Generator().manual_seed(seed)
    n_frames = torch.randint(1, 129, (nv,), generator=g)
    frame_mask = (torch.arange(128)[None] < n_frames[:, None]).float()
    lq = torch.randint(1, 31, (nq,), generator=g)
    query_mask = (torch.arange(30)[None] < lq[:, None]).float()
    with torch.no_grad():
        videos = model.encode_videos(torch.randn(nv, 32, 8, generator=g), torch.randn(nv, 128, 8, generator=g)
                                     * frame_mask[..., None], frame_mask)
        queries = model.encode_queries(torch.randn(nq, 30, 6, generator=g) * query_mask[..., None], query_mask)
    labels = torch.randint(0, nv, (nq,), generator=g)
    return queries, videos, labels


def test_chunked_evaluation_equals_brute_force_for_several_chunk_sizes():
    model = tiny_model()
    queries, videos, labels = random_encodings(model)
    with torch.no_grad():
        clip, frame = model.score_encoded(queries, videos)  # the whole (Nq, Nv) matrix at once
    full = {"clip": clip, "frame": frame, "fused": 0.3 * clip + 0.7 * frame}
    relevant = labels.unsqueeze(1)
    expected = {k: authors_rank(s, [[int(v)] for v in labels]) for k, s in full.items()}
    for qc, vc in [(1, 29), (37, 1), (5, 7), (37, 29), (100, 3), (8, 100)]:
        res = rank_encoded(model, queries, videos, relevant, query_chunk=qc, video_chunk=vc, keep_scores=True, topk=5)
        for kind in ("clip", "frame", "fused"):
            torch.testing.assert_close(torch.from_numpy(res.scores[kind]), full[kind], rtol=1e-5, atol=1e-6)
            assert res.ranks[kind].tolist() == expected[kind], (kind, qc, vc)
            assert res.metrics[kind] == recall_metrics(np.array(expected[kind]))
            assert res.topk[kind].shape == (37, 5)


class FakeScorer:
    """Any scorer of the agreed form: score_encoded(queries, videos) -> (clip, frame); fuse."""

    def score_encoded(self, queries, videos):
        clip = (queries.pooled @ videos.clips.amax(dim=1).T).round()  # rounded: ties on purpose
        frame = (queries.pooled @ videos.frames.mean(dim=1).T).round()
        return clip, frame

    def fuse(self, clip, frame):
        return 0.5 * clip + 0.5 * frame


def test_chunking_with_a_fake_scorer_and_ties():
    from ralbook.model import QueryEncoding, VideoEncoding

    g = torch.Generator().manual_seed(7)
    nq, nv = 50, 31
    queries = QueryEncoding(torch.randn(nq, 4, generator=g) * 2, torch.zeros(nq, 3, 4), torch.ones(nq, 3))
    videos = VideoEncoding(torch.randn(nv, 5, 4, generator=g), torch.randn(nv, 6, 4, generator=g), torch.ones(nv, 6))
    scorer = FakeScorer()
    clip, frame = scorer.score_encoded(queries, videos)
    rel = [torch.randperm(nv, generator=g)[:2].tolist() for _ in range(nq)]
    expected = authors_rank(scorer.fuse(clip, frame), rel)
    for qc, vc in [(1, 2), (7, 5), (64, 64)]:
        res = rank_encoded(scorer, queries, videos, padded(rel), query_chunk=qc, video_chunk=vc)
        assert res.ranks["fused"].tolist() == expected


# ----------------------------------------------------------------------------- relevance, formatting, device

def test_relevant_indices_default_and_replacement():
    videos = ["a", "b", "c"]
    rel = relevant_indices(["a#1", "c#1", "b#2"], ["a", "c", "b"], videos, {"b#2": ["c", "a"]})
    assert rel.tolist() == [[0, -1], [2, -1], [2, 0]]
    with pytest.raises(DataError, match="x#1"):
        relevant_indices(["x#1"], ["a"], videos, {"x#1": ["zzz"]})


def test_read_relevant_file_json_and_text(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"q#1": ["v1", "v2"]}))
    (tmp_path / "r.txt").write_text("q#1 v1 v2\n\nq#2 v3\n")
    assert read_relevant_file(tmp_path / "r.json") == {"q#1": ["v1", "v2"]}
    assert read_relevant_file(tmp_path / "r.txt") == {"q#1": ["v1", "v2"], "q#2": ["v3"]}
    (tmp_path / "bad.txt").write_text("only_a_caption\n")
    with pytest.raises(DataError, match="line 1"):
        read_relevant_file(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_relevant_file(tmp_path / "missing.txt")


def test_format_metrics_and_json():
    m = recall_metrics(np.array([1, 2, 20]))
    res = EvalResult({"clip": m, "frame": m, "fused": m}, {k: np.array([1, 2, 20]) for k in ("clip", "frame", "fused")},
                     {k: np.array([[0], [1], [0]]) for k in ("clip", "frame", "fused")}, ["a#1", "b#1", "c#1"],
                     ["a", "b", "c"], "test")
    text = format_metrics(res)
    assert text.splitlines()[0].split() == ["score", "R@1", "R@5", "R@10", "R@100", "SumR"]
    assert text.splitlines()[3].split()[0] == "fused" and float(text.splitlines()[3].split()[-1]) == pytest.approx(
        m["SumR"], abs=0.05)
    out = res.to_json()
    assert out["queries"][1] == {"cap_id": "b#1", "rank_clip": 2, "rank_frame": 2, "rank_fused": 2, "top_fused": ["b"]}
    json.dumps(out)


def test_device_resolution_and_autocast(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    from ralbook.errors import RalbookError

    if not torch.cuda.is_available():
        with pytest.raises(RalbookError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(RalbookError):
        autocast(torch.device("cpu"), "fp16")
    monkeypatch.setattr("ralbook.runtime.precision._host_lacks_bf16", lambda: True)
    with pytest.warns(RuntimeWarning, match="no bf16 instructions"):
        with autocast(torch.device("cpu"), "bf16"):
            pass
    monkeypatch.setattr("ralbook.runtime.precision._host_lacks_bf16", lambda: False)
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_emulated_bf16_is_detected_from_cpu_flags(tmp_path):
    from ralbook.runtime.precision import cpu_lacks_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_lacks_bf16(info)
    info.write_text("flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16\n")
    assert not cpu_lacks_bf16(info)
    info.write_text("flags\t\t: fpu sse2 avx avx2 amx_bf16 amx_tile\n")
    assert not cpu_lacks_bf16(info)
    assert not cpu_lacks_bf16(tmp_path / "missing")  # not Linux: no warning


# ----------------------------------------------------------------------------- evaluate() on a collection

@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from ralbook.data.collection import Collection
    from ralbook.data.demo import generate_demo

    root = tmp_path_factory.mktemp("data")
    generate_demo(root, n_train=2, n_val=2, n_test=23, visual_dim=8, text_dim=6, latent_dim=2)
    return Collection(root, "demo", "synthetic")


def test_evaluate_a_split_does_not_depend_on_chunks_or_batches(collection):
    model = tiny_model().train()
    whole = evaluate(model, collection, "test", query_chunk=10_000, video_chunk=10_000, video_batch=10_000,
                     keep_scores=True, progress=False)
    assert model.training  # the caller's mode is restored
    small = evaluate(model, collection, "test", query_chunk=3, video_chunk=4, video_batch=5, keep_scores=True,
                     progress=False)
    assert whole.video_ids == collection.videos("test") and len(whole.video_ids) == 23
    assert whole.cap_ids == [c for c, _ in collection.captions("test")]
    for kind in ("clip", "frame", "fused"):
        np.testing.assert_allclose(small.scores[kind], whole.scores[kind], rtol=1e-5, atol=1e-6)
        assert small.ranks[kind].tolist() == whole.ranks[kind].tolist()
        gt = [[whole.video_ids.index(collection.video_of(c))] for c in whole.cap_ids]
        assert whole.ranks[kind].tolist() == authors_rank(torch.from_numpy(whole.scores[kind]), gt)
    assert small.metrics == whole.metrics


def test_evaluate_with_a_multi_relevant_file(collection, tmp_path):
    model = tiny_model()
    base = evaluate(model, collection, "test", keep_scores=True, progress=False)
    cap, other = base.cap_ids[0], base.video_ids[5]
    path = tmp_path / "relevant.json"
    path.write_text(json.dumps({cap: [collection.video_of(cap), other]}))
    multi = evaluate(model, collection, "test", relevant=path, progress=False)
    single_other = authors_rank(torch.from_numpy(base.scores["fused"][:1]), [[5]])[0]
    assert multi.ranks["fused"][0] == min(base.ranks["fused"][0], single_other)
    assert multi.ranks["fused"][1:].tolist() == base.ranks["fused"][1:].tolist()
    path.write_text(json.dumps({cap: ["no_such_video"]}))
    with pytest.raises(DataError, match="no_such_video"):
        evaluate(model, collection, "test", relevant=path, progress=False)


# ----------------------------------------------------------------------------- non-finite scores and weights

def worst_rank(scores: torch.Tensor, relevant: list[list[int]]) -> list[int]:
    """Brute force: a relevant video with a non-finite score is never retrieved; other non-finite
    scores sort after every finite one (as -inf), ties by video order."""
    out = []
    for s, rel in zip(scores, relevant):
        clean = torch.where(torch.isfinite(s), s, torch.tensor(float("-inf")))
        order = torch.argsort(-clean, stable=True).tolist()
        out.append(min([order.index(k) + 1 for k in rel if torch.isfinite(s[k])], default=len(s) + 1))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_non_finite_score_is_the_worst_possible(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (30, 9), generator=g).float()  # many ties
    broken = torch.rand(30, 9, generator=g) < 0.3
    specials = torch.tensor([float("nan"), float("inf"), float("-inf")])
    scores[broken] = specials[torch.randint(0, 3, (int(broken.sum()),), generator=g)]
    rel = [[int(torch.randint(0, 9, (1,), generator=g))] for _ in range(30)]
    ranks = ranks_from_scores(scores, padded(rel))
    assert ranks.tolist() == worst_rank(scores, rel)
    for i, (r, row) in enumerate(zip(ranks.tolist(), rel)):
        if not torch.isfinite(scores[i, row[0]]):
            assert r == 10  # never retrieved, never first
    top = top_indices(scores, 9)
    for i in range(30):  # non-finite scores come after every finite one in the top list
        finite = torch.isfinite(scores[i, top[i]]).tolist()
        assert finite == sorted(finite, reverse=True)


def test_a_nan_score_never_ranks_a_video_first():
    scores = torch.tensor([[float("nan"), 0.1, 0.2], [float("nan")] * 3, [0.5, float("nan"), 0.5]])
    ranks = ranks_from_scores(scores, torch.tensor([[0], [0], [1]]))
    assert ranks.tolist() == [4, 4, 4]
    # finite ties keep the authors' rule: the video listed first wins
    assert ranks_from_scores(scores[2:], torch.tensor([[2]])).tolist() == [2]
    assert top_indices(scores[2:], 3).tolist() == [[0, 2, 1]]


def test_evaluate_refuses_non_finite_weights_encodings_and_scores(collection, monkeypatch):
    from ralbook.errors import NonFiniteError

    model = tiny_model()
    with torch.no_grad():
        model.clip_proj.linear.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"checkpoint x\.pt: 1 of \d+ weight tensors .*clip_proj\.linear\.weight"):
        evaluate(model, collection, "test", progress=False, source="checkpoint x.pt")
    # finite weights and finite features, but two videos' features are so extreme that they overflow
    model = tiny_model()
    original, extreme = collection.video_arrays, set(collection.videos("test")[:2])

    def video_arrays(video_id):
        clip, frames = original(video_id)
        return (clip * 0 + 3e38, frames * 0 + 3e38) if video_id in extreme else (clip, frames)

    monkeypatch.setattr(collection, "video_arrays", video_arrays)
    with pytest.raises(NonFiniteError, match=r"2 of 23 videos of split 'test' encode to non-finite"):
        evaluate(model, collection, "test", progress=False)
    monkeypatch.undo()
    # a scorer that returns NaN for some pairs: refused naming how many queries and videos
    n_q, n_v = 7, 5
    from ralbook.retrieval.evaluate import RankAccumulator

    acc = RankAccumulator(n_v, source="checkpoint y.pt")
    s = torch.rand(n_q, n_v)
    s[1, 2] = s[4, 2] = float("nan")
    acc.add({k: s for k in ("clip", "frame", "fused")}, torch.zeros(n_q, 1, dtype=torch.long))
    with pytest.raises(NonFiniteError, match=r"checkpoint y\.pt: 2 of 7 queries and 1 of 5 videos"):
        acc.result([str(i) for i in range(n_q)], [str(i) for i in range(n_v)])


def test_chance_metrics_equal_the_average_over_every_ranking():
    """Expected recall of a random ranking, against enumerating all 6! orders of 6 videos."""
    import itertools

    from ralbook.retrieval.metrics import chance_metrics

    n_videos, relevant_sets = 6, [{0}, {1, 4}, {0, 2, 3, 5}, set(), set(range(6))]
    orders = list(itertools.permutations(range(n_videos)))
    expected = {}
    for k in (1, 5, 10, 100):
        hits = [sum(any(v in rel for v in order[:k]) for order in orders) / len(orders) for rel in relevant_sets]
        expected[f"R@{k}"] = 100.0 * float(np.mean(hits))
    expected["SumR"] = sum(expected[f"R@{k}"] for k in (1, 5, 10, 100))
    got = chance_metrics([len(r) for r in relevant_sets], n_videos)
    assert got == pytest.approx(expected, abs=1e-9)
    assert chance_metrics([1] * 3, 200)["R@10"] == pytest.approx(5.0)


def test_chance_metrics_reject_impossible_counts():
    from ralbook.errors import DataError
    from ralbook.retrieval.metrics import chance_metrics

    for counts, n in (([], 5), ([6], 5), ([-1], 5)):
        with pytest.raises(DataError):
            chance_metrics(counts, n)
