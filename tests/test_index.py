"""Index folder and two-stage retrieval: round trip, equality with exhaustive ranking, ranks outside K."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ralbook import cli
from ralbook.checkpoint import FORMAT_VERSION, HASH_KEY, content_hash, load_file
from ralbook.data.collection import Collection
from ralbook.errors import CheckpointError
from ralbook.files import save_atomic
from ralbook.retrieval.evaluate import encode_video_set, evaluate
from ralbook.retrieval.index import MODEL_FILE, Index, IndexFolderError, build_index, evaluate_index, model_hash, two_stage_ranks
from ralbook.model import build_model
from test_train import easy_demo, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")
N_TEST = 25


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = easy_demo(tmp_path_factory.mktemp("data"), 10, 4, N_TEST)
    cfg = tiny_cfg(root)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    collection = Collection.from_config(cfg.data)
    folder = build_index(model, collection, "test", cfg, tmp_path_factory.mktemp("index") / "idx",
                         batch_size=7, progress=False)
    exhaustive = evaluate(model, collection, "test", cfg, "cpu", keep_scores=True, progress=False)
    return cfg, model, collection, folder, exhaustive


def test_the_index_holds_the_encodings_and_the_model(setup, tmp_path):
    cfg, model, collection, folder, _ = setup
    index = Index.open(folder)  # with the weights stored in the folder
    assert index.video_ids == collection.videos("test") and len(index) == N_TEST
    assert index.manifest["model_hash"] == model_hash(model)
    want = encode_video_set(model, collection, index.video_ids, torch.device("cpu"), 64, progress=False)
    got = index.videos(slice(None))
    for name in ("clips", "frames", "mask"):
        assert torch.allclose(getattr(got, name), getattr(want, name), atol=1e-6), name
    assert isinstance(index.arrays["frames"], np.memmap)
    half = Index.open(build_index(model, collection, "test", cfg, tmp_path / "half", dtype="float16",
                                  progress=False))
    assert half.arrays["frames"].dtype == np.float16
    assert torch.allclose(half.videos(slice(None)).frames, want.frames, atol=2e-3)


def test_an_index_refuses_another_model_or_an_unfinished_folder(setup, tmp_path):
    cfg, model, _, folder, _ = setup
    other = build_model(cfg.model)
    with pytest.raises(IndexFolderError, match="other model weights"):
        Index.open(folder, model=other)
    (tmp_path / "broken").mkdir()
    with pytest.raises(IndexFolderError, match="manifest.json"):
        Index.open(tmp_path / "broken")


def test_two_stage_equals_exhaustive_when_k_covers_every_video(setup):
    cfg, model, collection, folder, exhaustive = setup
    index = Index.open(folder, model=model)
    result, missed = evaluate_index(index, collection, "test", rerank=N_TEST, query_chunk=17, progress=False)
    assert missed == 0
    for kind in ("clip", "frame", "fused"):
        assert np.array_equal(result.ranks[kind], exhaustive.ranks[kind]), kind
    assert result.metrics == exhaustive.metrics
    feats, mask = _queries(collection, exhaustive.cap_ids[:6])
    found = index.search(feats, mask, k=5, rerank=N_TEST)
    fused = torch.from_numpy(exhaustive.scores["fused"][:6])
    assert np.array_equal(found.indices, torch.sort(fused, dim=1, descending=True, stable=True).indices[:, :5])
    assert np.allclose(found.scores, fused.gather(1, torch.from_numpy(found.indices)), atol=1e-5)


def _queries(collection, cap_ids):
    from ralbook.data.datasets import QueryDataset, collate_queries

    batch = collate_queries([QueryDataset(collection, cap_ids)[i] for i in range(len(cap_ids))])
    return batch["query_feats"], batch["query_mask"]


def test_ranks_outside_the_first_stage_are_first_stage_ranks(setup):
    """Brute force from the exhaustive score matrices: inside the top K the rank among the K by fused
    score, outside it the clip-score rank, which exceeds K."""
    _, model, collection, folder, exhaustive = setup
    k = 4
    result, missed = evaluate_index(Index.open(folder, model=model), collection, "test", rerank=k, progress=False)
    clip, fused = exhaustive.scores["clip"], exhaustive.scores["fused"]
    index = {v: i for i, v in enumerate(exhaustive.video_ids)}
    want, outside = [], 0
    for q, cap in enumerate(exhaustive.cap_ids):
        own = index[collection.video_of(cap)]
        by_clip = sorted(range(len(index)), key=lambda j: (-clip[q, j], j))
        if own in by_clip[:k]:
            top = sorted(by_clip[:k], key=lambda j: (-fused[q, j], j))
            want.append(top.index(own) + 1)
        else:
            outside += 1
            want.append(by_clip.index(own) + 1)
            assert want[-1] > k
    assert outside > 0 and missed == outside  # the setting does exercise the outside case
    assert np.array_equal(result.ranks["fused"], np.array(want))
    assert np.array_equal(result.ranks["clip"], exhaustive.ranks["clip"])


def test_index_and_evaluate_commands(setup, tmp_path, capsys):
    cfg, model, _, _, exhaustive = setup
    ckpt = tmp_path / "best.pt"
    save_atomic({"format": "ralbook-model", "version": 1, "config": cfg.to_dict(), "model": model.state_dict(),
                 "epoch": 0, "val_metrics": {}}, ckpt)
    data = ["--data-root", cfg.data.data_root, "--collection", cfg.data.collection, "--no-progress"]
    assert cli.main(["index", "--checkpoint", str(ckpt), "--split", "test", "--out", str(tmp_path / "idx")] + data) == 0
    out_json = tmp_path / "two.json"
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--index", str(tmp_path / "idx"), "--rerank", "3",
                     "--json", str(out_json)] + data) == 0
    printed = capsys.readouterr().out
    assert "have no relevant video among the first-stage top 3" in printed
    saved = json.loads(out_json.read_text())
    assert saved["rerank"] == 3 and saved["metrics"]["clip"] == exhaustive.metrics["clip"]
    other = tmp_path / "other.pt"
    save_atomic({"format": "ralbook-model", "version": 1, "config": cfg.to_dict(),
                 "model": build_model(cfg.model).state_dict(), "epoch": 0, "val_metrics": {}}, other)
    assert cli.main(["evaluate", "--checkpoint", str(other), "--index", str(tmp_path / "idx")] + data) == 2
    assert "other model weights" in capsys.readouterr().err


@pytest.mark.parametrize("video_block,row_block,dense_share", [(64, 256, 0.5), (2, 3, 2.0), (3, 4, 0.0),
                                                                 (2, 5, 0.3)])
def test_rerank_scores_each_query_against_its_own_candidates(setup, video_block, row_block, dense_share):
    """Per-query candidate sets that differ (random, not the first stage's), queries of different
    lengths, small blocks, every video scored per query (share 2), every video scored densely (share 0)
    or a mix: every (query, candidate) frame score equals the exhaustive one."""
    _, model, collection, folder, exhaustive = setup
    index = Index.open(folder, model=model)
    feats, mask = _queries(collection, exhaustive.cap_ids[:20])
    assert len(set(mask.sum(dim=1).tolist())) > 1  # the length slicing is exercised
    generator = torch.Generator().manual_seed(3)
    candidates = torch.stack([torch.sort(torch.randperm(N_TEST, generator=generator)[:6]).values for _ in range(20)])
    assert len({tuple(row) for row in candidates.tolist()}) > 1
    frame = index.rerank(index.encode_queries(feats, mask), candidates, video_block, row_block, dense_share)
    want = torch.from_numpy(exhaustive.scores["frame"][:20]).gather(1, candidates)
    torch.testing.assert_close(frame, want, atol=1e-5, rtol=0)


def test_packed_word_scorer_equals_the_model_for_full_padded_and_empty_videos(setup):
    """The packed scorer's two paths (a block of videos, one video) against ``model.frame_scores`` on
    hand-made encodings: a video with every frame valid (no clamp at 0: negative best similarities
    stay negative), one with padding (padded frames count as similarity 0) and one with no valid frame."""
    from ralbook.retrieval.index import _PackedWordScorer
    from ralbook.model.encodings import VideoEncoding

    _, model, collection, _, exhaustive = setup
    generator = torch.Generator().manual_seed(5)
    d, lf = model.cfg.hidden_size, 6
    feats, qmask = _queries(collection, exhaustive.cap_ids[:9])
    with torch.no_grad():
        queries = model.encode_queries(feats, qmask)
        away = -queries.words.sum(dim=(0, 1))  # frames pointing away from the words: negative similarities
        frames = away + 0.1 * away.norm() / d**0.5 * torch.randn(3, lf, d, generator=generator)
        mask = torch.ones(3, lf)
        mask[1, 4:] = 0
        mask[2] = 0
        videos = VideoEncoding(torch.randn(3, 2, d, generator=generator), frames * mask.unsqueeze(-1), mask)
        want = model.frame_scores(queries, videos)
        scorer = _PackedWordScorer(model, queries)
        prepared = scorer.prepare(videos)
        rows = torch.tensor([4, 0, 7, 2, 8])
        torch.testing.assert_close(scorer.score(rows, prepared), want[rows], atol=1e-5, rtol=0)
        for v in range(3):
            got = scorer.score_one(rows, prepared.select(slice(v, v + 1)))
            torch.testing.assert_close(got, want[rows, v], atol=1e-5, rtol=0)
    assert bool((want[:, 0] < 0).all())  # the unpadded video's scores are not clamped
    assert bool((want[:, 1] >= 0).all())  # the padded one's are clamped at 0
    assert bool((want[:, 2] == 0).all())


def test_an_index_built_in_bf16_encodes_queries_in_bf16_and_scores_in_fp32(setup, tmp_path):
    """The precision recorded with the index (train.amp of its configuration, auto resolved when built)
    is used to encode the queries; both stages score the float32 encodings in fp32 (see two_stage)."""
    cfg, model, collection, _, exhaustive = setup
    bf16 = cfg.override("train.amp=bf16")
    index = Index.open(build_index(model, collection, "test", bf16, tmp_path / "bf16", progress=False), model=model)
    assert index.amp == "bf16"
    fp32 = Index.open(build_index(model, collection, "test", cfg, tmp_path / "fp32", progress=False), model=model)
    assert fp32.amp == cfg.train.amp == "none"
    feats, mask = _queries(collection, exhaustive.cap_ids[:8])
    queries, exact = index.encode_queries(feats, mask), fp32.encode_queries(feats, mask)
    assert queries.words.dtype == queries.pooled.dtype == torch.float32
    gap = (queries.pooled - exact.pooled).abs().max()
    assert 0 < gap < 0.05  # bf16 ran, and stays close
    stages = index.two_stage(queries, rerank=N_TEST)
    videos = index.videos(slice(None))
    with torch.no_grad():  # fp32: no autocast around them
        clip, frame = model.clip_scores(queries, videos), model.frame_scores(queries, videos)
    torch.testing.assert_close(stages["first"], clip, atol=1e-6, rtol=0)
    torch.testing.assert_close(stages["frame"], frame.gather(1, stages["candidates"]), atol=1e-5, rtol=0)
    auto = Index.open(build_index(model, collection, "test", cfg.override("train.amp=auto"), tmp_path / "auto",
                                  progress=False), model=model)
    assert auto.amp == "none"  # decided when built (the suite pins RALBOOK_NATIVE_BF16=0), never "auto"


def test_the_first_stage_keeps_the_k_best_by_the_ranks_tie_rule(setup, monkeypatch):
    """With tied clip scores the K candidates are the first videos in video order, as ranks count them, so a
    relevant video outside the candidates always ranks below K."""
    _, model, collection, folder, exhaustive = setup
    index = Index.open(folder, model=model)
    feats, mask = _queries(collection, exhaustive.cap_ids[:4])
    tied = torch.zeros(4, N_TEST)
    tied[:, 7] = 1.0  # one clear best, every other video tied
    monkeypatch.setattr(Index, "first_stage", lambda self, queries, video_chunk=1000: tied)
    stages = index.two_stage(index.encode_queries(feats, mask), rerank=5)
    assert stages["candidates"].tolist() == [[0, 1, 2, 3, 7]] * 4
    ranks, found = two_stage_ranks(stages, torch.tensor([[10], [20], [3], [7]]))
    assert ranks["clip"].tolist() == [11, 21, 5, 1] and found.tolist() == [False, False, True, True]
    assert bool((ranks["fused"][:2] > 5).all())


def test_the_index_model_file_is_a_checked_checkpoint_and_old_folders_still_open(setup, tmp_path):
    """model.pt carries the checkpoint format's version and content hash; a damaged one is refused, and a
    folder written before 0.2 (version 1: no hash, no epoch) still opens."""
    cfg, model, _, folder, _ = setup
    stored = load_file(folder / MODEL_FILE)
    assert stored["version"] == FORMAT_VERSION and stored[HASH_KEY] == content_hash(stored)
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    stored["model"] = {k: v + 1 for k, v in stored["model"].items()}
    save_atomic(stored, damaged / MODEL_FILE)
    with pytest.raises(CheckpointError, match="content check"):
        Index.open(damaged)
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    save_atomic({"format": "ralbook-model", "version": 1, "config": cfg.to_dict(), "model": model.state_dict()},
                old / MODEL_FILE)
    assert Index.open(old).manifest["model_hash"] == model_hash(model)
