"""The demo collection generator: determinism, release layout, ground truth and the designed signals."""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from ralbook import cli
from ralbook.data.demo import SLOTS, DemoParams, build_world, caption_describes, file_digests, generate_demo, load_ground_truth
from ralbook.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data"
SMALL = dict(n_train=14, n_val=4, n_test=8)
CAP_ID = re.compile(r"^([^#\s]+)#enc#(\d+)$")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A small collection, generated once for the read-only tests."""
    root = tmp_path_factory.mktemp("demo_small")
    generate_demo(root, seed=7, **SMALL)
    return root


# ----------------------------------------------------------------------------- helpers (independent readers)

def read_captions(root: Path, split: str) -> list[tuple[str, str]]:
    lines = (root / "demo" / "TextData" / f"demo{split}.caption.txt").read_text().splitlines()
    return [tuple(line.split(" ", 1)) for line in lines]


def read_features(root: Path) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    d = root / "demo" / "FeatureData" / "synthetic"
    rows, dim = map(int, (d / "shape.txt").read_text().split())
    feats = np.fromfile(d / "feature.bin", dtype=np.float32)
    assert feats.size == rows * dim, "feature.bin size disagrees with shape.txt"
    ids = (d / "id.txt").read_bytes().decode("iso-8859-1").split()
    video2frames = ast.literal_eval((d / "video2frames.txt").read_text())
    return feats.reshape(rows, dim), ids, video2frames


def video_frames(root: Path, video: str) -> np.ndarray:
    feats, ids, v2f = read_features(root)
    index = {name: i for i, name in enumerate(ids)}
    return feats[[index[f] for f in v2f[video]]]


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T) / np.outer(np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1))


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_files(tmp_path, small):
    generate_demo(tmp_path, seed=7, **SMALL)
    assert file_digests(tmp_path / "demo") == file_digests(small / "demo")


def test_other_seed_gives_other_data(tmp_path, small):
    generate_demo(tmp_path, seed=8, **SMALL)
    a, b = file_digests(tmp_path / "demo"), file_digests(small / "demo")
    assert a["FeatureData/synthetic/feature.bin"] != b["FeatureData/synthetic/feature.bin"]


# ----------------------------------------------------------------------------- layout

def test_release_layout_files_ids_and_shapes(small):
    base = small / "demo"
    for rel in ["TextData/demotrain.caption.txt", "TextData/demoval.caption.txt", "TextData/demotest.caption.txt",
                "TextData/roberta_demo_query_feat.hdf5", "TextData/demo_words.json",
                "FeatureData/synthetic/feature.bin", "FeatureData/synthetic/id.txt",
                "FeatureData/synthetic/shape.txt", "FeatureData/synthetic/video2frames.txt",
                "GroundTruth/world.json", "GroundTruth/videos.json", "GroundTruth/captions.json"]:
        assert (base / rel).is_file(), rel
    feats, ids, v2f = read_features(small)
    assert feats.shape[1] == 64 and np.isfinite(feats).all()
    assert len(set(ids)) == len(ids)
    assert sum(len(f) for f in v2f.values()) == len(ids)
    for video, frames in v2f.items():
        assert frames == [f"{video}_{i}" for i in range(len(frames))]
    split_videos = {}
    all_caps = []
    for split, n_videos in zip(("train", "val", "test"), (SMALL["n_train"], SMALL["n_val"], SMALL["n_test"])):
        caps = read_captions(small, split)
        all_caps += [c for c, _ in caps]
        vids = {CAP_ID.match(c).group(1) for c, _ in caps}
        assert all(CAP_ID.match(c) for c, _ in caps)
        assert len(vids) == n_videos and vids <= set(v2f)
        split_videos[split] = vids
    assert not (split_videos["train"] & split_videos["val"]) and not (split_videos["train"] & split_videos["test"])
    assert not (split_videos["val"] & split_videos["test"])
    assert len(set(all_caps)) == len(all_caps)
    with h5py.File(base / "TextData" / "roberta_demo_query_feat.hdf5", "r") as f:
        assert set(f.keys()) == set(all_caps)
        for cap in all_caps:
            x = f[cap][()]
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 48 and 1 <= x.shape[0] <= 30
            assert np.isfinite(x).all() and x.std() > 0.05   # not a tiny-variance all-positive signal


def test_words_align_one_to_one_with_token_rows(small):
    words = json.loads((small / "demo" / "TextData" / "demo_words.json").read_text())
    captions = dict(c for s in ("train", "val", "test") for c in read_captions(small, s))
    assert set(words) == set(captions)
    with h5py.File(small / "demo" / "TextData" / "roberta_demo_query_feat.hdf5", "r") as f:
        for cap, text in captions.items():
            assert " ".join(words[cap]) == text
            assert len(words[cap]) == f[cap].shape[0]


def test_captions_of_a_video_may_be_spread_over_the_file(tmp_path):
    """Real releases do not promise grouping; with spread_fraction=1 every video's last caption moves to the end."""
    generate_demo(tmp_path, seed=4, n_train=6, n_val=1, n_test=1, spread_fraction=1.0)
    caps = [c for c, _ in read_captions(tmp_path, "train")]
    videos = [c.split("#")[0] for c in caps]
    first_seen = list(dict.fromkeys(videos))
    assert first_seen == sorted(first_seen)   # first appearance keeps the generation order
    multi = [v for v in first_seen if videos.count(v) > 1]
    assert multi
    tail = caps[len(caps) - len(multi):]
    assert [c.split("#")[0] for c in tail] == multi
    assert all(int(c.split("#")[2]) == videos.count(c.split("#")[0]) - 1 for c in tail)


# ----------------------------------------------------------------------------- ground truth

def test_ground_truth_spans_and_moments(small):
    gt = load_ground_truth(small)
    _, _, v2f = read_features(small)
    assert set(gt.videos) == set(v2f)
    for vid, video in gt.videos.items():
        assert video.n_frames == len(v2f[vid])
        assert len(video.moments) >= 1
        previous_end = 0
        for m in video.moments:
            assert previous_end <= m.start < m.end <= video.n_frames
            assert set(m.concepts) == set(SLOTS) and all(c in gt.concepts for c in m.concepts.values())
            previous_end = m.end
    for cap_id, cap in gt.captions.items():
        moment = gt.videos[cap.video].moments[cap.moment]
        assert cap_id.split("#")[0] == cap.video and cap.split == gt.videos[cap.video].split
        assert (cap.start, cap.end) == (moment.start, moment.end)
        assert set(cap.concepts) <= set(moment.concepts.values())
        assert len(cap.word_types) == len(cap.words) == len(cap.word_refs)
        assert [gt.word_types[w] for w in cap.words] == cap.word_types
        assert cap.ambiguity in (0, 1) and cap.n_consistent >= 1 and cap.video not in cap.distractors


def test_consistency_counts_match_a_plain_recount(small):
    gt = load_ground_truth(small)
    world = build_world(DemoParams(seed=7, **SMALL))
    for cap in gt.captions.values():
        count = sum(any(caption_describes(world, cap.concepts, cap.generic, m.concepts) for m in v.moments)
                    for v in gt.videos.values() if v.split == cap.split)
        assert count == cap.n_consistent
        own = gt.videos[cap.video].moments[cap.moment].concepts
        for vid in cap.distractors:
            shared = [sum(m.concepts[s] == own[s] for s in SLOTS) for m in gt.videos[vid].moments]
            assert max(shared) >= 2 and gt.videos[vid].split == cap.split


def test_multi_ground_truth_lists_every_described_video(small):
    """relevant_SPLIT.json: a plain recount with caption_describes, own video first; train has none."""
    gt = load_ground_truth(small)
    world = build_world(DemoParams(seed=7, **SMALL))
    truth_dir = small / "demo" / "GroundTruth"
    assert not (truth_dir / "relevant_train.json").exists()
    for split in ("val", "test"):
        relevant = json.loads((truth_dir / f"relevant_{split}.json").read_text())
        caps = {c: t for c, t in gt.captions.items() if t.split == split}
        assert set(relevant) == set(caps)
        for cap_id, cap in caps.items():
            want = {vid for vid, v in gt.videos.items() if v.split == split
                    and any(caption_describes(world, cap.concepts, cap.generic, m.concepts) for m in v.moments)}
            assert relevant[cap_id][0] == cap.video and set(relevant[cap_id]) == want
            assert len(relevant[cap_id]) == len(want) == cap.n_consistent


def test_evaluation_reads_the_multi_ground_truth(small):
    from ralbook.retrieval.metrics import read_relevant_file, relevant_indices

    relevant = read_relevant_file(small / "demo" / "GroundTruth" / "relevant_test.json")
    caps = [c for c, _ in read_captions(small, "test")]
    videos = list(dict.fromkeys(c.split("#")[0] for c in caps))
    rows = relevant_indices(caps, [c.split("#")[0] for c in caps], videos, relevant)
    assert [sorted(videos[j] for j in row if j >= 0) for row in rows.tolist()] == [sorted(relevant[c]) for c in caps]


def test_videos_record_events_and_unrelated_frames(small):
    gt = load_ground_truth(small)
    for vid, video in gt.videos.items():
        caps = [c for c in gt.captions.values() if c.video == vid]
        covered = set()
        for c in caps:
            covered.update(range(c.start, c.end))
        assert video.n_events == len(video.moments) >= 1
        assert video.unrelated_share == pytest.approx(1 - len(covered) / video.n_frames, abs=1e-6)
    shares = [v.unrelated_share for v in gt.videos.values()]
    assert min(shares) < max(shares) and len({v.n_events for v in gt.videos.values()}) > 1


def test_label_files_follow_the_ground_truth(small):
    from ralbook.studies.uncertainty import read_labels

    gt = load_ground_truth(small)
    labels_dir = small / "demo" / "GroundTruth" / "labels"
    for split in ("val", "test"):
        caps = {c for c, t in gt.captions.items() if t.split == split}
        vids = {v for v, t in gt.videos.items() if t.split == split}

        def read(name):
            rows = [line.split("\t") for line in (labels_dir / f"{split}_{name}.tsv").read_text().splitlines()]
            return {k: int(v) for k, v in rows}

        assert read("caption_ambiguous") == {c: gt.captions[c].ambiguity for c in caps}
        support = read("support_ambiguous")
        for v in vids:
            own = [gt.captions[c].ambiguity for c in caps if gt.captions[c].video == v]
            assert support[v] == int(np.mean(own) >= 0.5)
        median = np.median([gt.videos[v].unrelated_share for v in vids])
        assert read("video_unrelated") == {v: int(gt.videos[v].unrelated_share > median) for v in vids}
        if split == "test":  # the sigma-report reader accepts what the generator writes (both classes present)
            assert read_labels(labels_dir / "test_caption_ambiguous.tsv", caps, vids).kind == "caption"


def test_generic_words_are_noisy_mixtures_of_their_members():
    """A generic word's rows vary from use to use; a specific word's rows vary only by token noise and context."""
    from ralbook.data.demo import _token_features

    params = DemoParams(seed=11)
    world = build_world(params)
    rng = np.random.default_rng(0)
    generic = np.stack([_token_features(rng, world, params, ["a", "person", "handles", "the", "ball"])[2]
                        for _ in range(200)])
    specific = np.stack([_token_features(rng, world, params, ["a", "person", "lifts", "the", "ball"])[2]
                         for _ in range(200)])
    assert generic.var(axis=0).sum() > 3 * specific.var(axis=0).sum()
    # on average the mixture points at its family: closer to the family's words than to other actions
    members = world.members["handles"]
    others = np.stack([world.word_vectors[w] for w in ("walks", "eats", "talks")])
    mean = generic.mean(axis=0)
    assert cos(mean[None], members).mean() > cos(mean[None], others).mean() + 0.2


@pytest.mark.parametrize("source", ["shipped", "other seed"])
def test_a_probe_on_raw_text_statistics_separates_ambiguous_captions(source, tmp_path):
    """The signal is in the inputs: logistic regression on per-caption token-variance statistics,
    trained on train captions, separates ambiguous test captions (no model involved).

    AUC measured for generator seeds 31 (this test's other seed), 1, 2, 3, 4 with the same sizes, on a
    2-core AMD EPYC: 0.917, 0.923, 0.942, 0.954, 0.954 (min 0.917). The bar, 0.85, is the smallest minus 0.07."""
    from ralbook.data.collection import Collection
    from ralbook.studies.uncertainty import caption_probe_auc

    root = SHIPPED
    if source != "shipped":
        root = tmp_path
        generate_demo(root, seed=31, n_train=200, n_val=5, n_test=120)
    assert caption_probe_auc(Collection(root, "demo"), load_ground_truth(root)) >= 0.85


def test_planted_distractors_share_some_but_not_all_concepts(tmp_path):
    generate_demo(tmp_path, seed=3, n_train=6, n_val=2, n_test=3, distractor_fraction=1.0)
    gt = load_ground_truth(tmp_path)
    derived = [m for v in gt.videos.values() for m in v.moments if m.derived_from]
    assert derived
    for m in derived:
        src_vid, src_idx = m.derived_from.split("/")
        src = gt.videos[src_vid].moments[int(src_idx)].concepts
        changed = sum(src[s] != m.concepts[s] for s in SLOTS)
        assert 1 <= changed <= 2


def test_invariants_hold_over_several_seeds(tmp_path):
    """Property check: spans, word alignment and named concepts for a handful of seeds and sizes."""
    for seed in range(4):
        root = tmp_path / str(seed)
        generate_demo(root, seed=seed, n_train=3, n_val=1, n_test=2, min_frames=24, max_frames=60)
        gt = load_ground_truth(root)
        for v in gt.videos.values():
            assert 24 <= v.n_frames <= 60
            ends = [(m.start, m.end) for m in v.moments]
            assert all(e1 <= s2 for (_, e1), (s2, _) in zip(ends, ends[1:]))
        for c in gt.captions.values():
            assert 6 <= len(c.words) <= DemoParams().max_words
            assert all(gt.concepts[x]["kind"] in SLOTS for x in c.concepts)


# ----------------------------------------------------------------------------- designed signals

def test_filler_words_carry_no_concept_signal_but_content_words_do(small):
    params = DemoParams(seed=7, **SMALL)
    world = build_world(params)
    fillers = [w for w, t in world.word_type.items() if t == "filler"]
    # exact: filler base vectors are orthogonal to the text image of the concept space
    assert np.abs(world.text_map.T @ np.stack([world.word_vectors[w] for w in fillers]).T).max() < 1e-10
    # in the stored token rows: similarity to the concept directions
    concept_dirs = {c: world.text_map @ world.latent[c] for c in world.concept_kind}
    names = list(concept_dirs)
    dirs = np.stack([concept_dirs[c] for c in names])
    gt = load_ground_truth(small)
    filler_sims, own_sims = [], []
    with h5py.File(small / "demo" / "TextData" / "roberta_demo_query_feat.hdf5", "r") as f:
        for cap_id, cap in gt.captions.items():
            rows = f[cap_id][()].astype(np.float64)
            sims = cos(rows, dirs)
            for i, (t, ref) in enumerate(zip(cap.word_types, cap.word_refs)):
                if t == "filler":
                    filler_sims.append(np.abs(sims[i]).max())
                elif t == "specific":
                    own_sims.append(sims[i, names.index(ref)])
    assert np.mean(own_sims) > 0.6
    assert np.mean(filler_sims) < 0.5 * np.mean(own_sims)


def test_moment_frames_show_their_concepts_and_background_does_not(small):
    world = build_world(DemoParams(seed=7, **SMALL))
    gt = load_ground_truth(small)
    inside, outside = [], []
    for vid, video in gt.videos.items():
        frames = video_frames(small, vid).astype(np.float64)
        in_moment = np.zeros(len(frames), dtype=bool)
        for m in video.moments:
            target = world.visual_map @ sum(world.latent[c] for c in m.concepts.values())
            inside += list(cos(frames[m.start:m.end], target[None])[:, 0])
            in_moment[m.start:m.end] = True
        for m in video.moments:   # background frames against every moment of the video
            target = world.visual_map @ sum(world.latent[c] for c in m.concepts.values())
            outside += list(np.abs(cos(frames[~in_moment], target[None])[:, 0]))
    assert np.mean(inside) > 0.5
    assert np.mean(outside) < 0.5 * np.mean(inside)


def test_ambiguous_captions_use_more_generic_words(small):
    gt = load_ground_truth(small)

    def share(cap, kind):
        content = [t for t in cap.word_types if t != "filler"]
        return sum(t == kind for t in content) / len(content)

    amb = [c for c in gt.captions.values() if c.ambiguity == 1]
    spec = [c for c in gt.captions.values() if c.ambiguity == 0]
    assert amb and spec
    assert np.mean([share(c, "generic") for c in amb]) > np.mean([share(c, "generic") for c in spec]) + 0.2
    def core(cap):   # how many of action and object the caption names specifically
        return sum(gt.concepts[x]["kind"] in ("action", "object") for x in cap.concepts)

    assert all(core(c) <= 1 for c in amb) and all(core(c) == 2 for c in spec)
    assert np.mean([c.n_consistent for c in amb]) > np.mean([c.n_consistent for c in spec])


# ----------------------------------------------------------------------------- the shipped copy

def test_shipped_demo_equals_a_fresh_regeneration(tmp_path):
    shipped = SHIPPED / "demo"
    assert shipped.is_dir(), f"{shipped} is missing: run `python -m ralbook make-demo`"
    generate_demo(tmp_path)   # the defaults
    fresh = tmp_path / "demo"
    a, b = file_digests(shipped), file_digests(fresh)
    assert set(a) == set(b)
    floats = {"FeatureData/synthetic/feature.bin", "TextData/roberta_demo_query_feat.hdf5"}
    for rel in sorted(set(a) - floats):
        assert a[rel] == b[rel], f"{rel} differs from a regeneration with the default parameters"
    # float data: exact on this machine; a last-bit tolerance allows another BLAS to round differently
    x = np.fromfile(shipped / "FeatureData/synthetic/feature.bin", dtype=np.float32)
    y = np.fromfile(fresh / "FeatureData/synthetic/feature.bin", dtype=np.float32)
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    with h5py.File(shipped / "TextData/roberta_demo_query_feat.hdf5", "r") as f, \
            h5py.File(fresh / "TextData/roberta_demo_query_feat.hdf5", "r") as g:
        assert sorted(f) == sorted(g)
        for key in f:
            np.testing.assert_allclose(f[key][()], g[key][()], rtol=0, atol=1e-5)


def test_shipped_demo_has_the_documented_shape():
    gt = load_ground_truth(SHIPPED)
    frames = np.array([v.n_frames for v in gt.videos.values()])
    assert frames.min() >= 24 and frames.max() <= 200
    assert (frames > 128).any() and (frames < 32).any()   # binning and repetition are both exercised
    sizes = {s: sum(v.split == s for v in gt.videos.values()) for s in ("train", "val", "test")}
    assert sizes == {"train": DemoParams.n_train, "val": DemoParams.n_val, "test": DemoParams.n_test}
    total = sum(p.stat().st_size for p in (SHIPPED / "demo").rglob("*") if p.is_file())
    assert total < 25 * 2**20


# ----------------------------------------------------------------------------- API, CLI, errors

def test_reader_round_trip(small):
    if importlib.util.find_spec("ralbook.data") is None:
        pytest.skip("ralbook.data (the release-layout reader) is not written yet")
    from ralbook.data.collection import Collection

    gt = load_ground_truth(small)
    col = Collection(small, "demo", "synthetic")
    assert (col.visual_dim, col.text_dim) == (64, 48)
    col.validate(["train", "val", "test"])
    for split in ("train", "val", "test"):
        caps = read_captions(small, split)
        assert col.captions(split) == caps
        assert col.videos(split) == list(dict.fromkeys(c.split("#")[0] for c, _ in caps))
        for cap_id, _ in caps[:5]:
            assert col.video_of(cap_id) == gt.captions[cap_id].video
            assert col.words(cap_id) == gt.captions[cap_id].words
            assert col.text_features(cap_id).shape == (len(gt.captions[cap_id].words), 48)
    vid = next(iter(gt.videos))
    np.testing.assert_array_equal(col.raw_frames(vid), video_frames(small, vid))


def test_make_demo_command(tmp_path, capsys):
    code = cli.main(["make-demo", "--out", str(tmp_path), "--seed", "5", "--n-train", "3", "--n-val", "1",
                     "--n-test", "2"])
    assert code == 0
    assert str(tmp_path / "demo") in capsys.readouterr().out
    assert len({c.split("#")[0] for c, _ in read_captions(tmp_path, "test")}) == 2


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate_demo(tmp_path, n_train=0)
    with pytest.raises(TypeError, match="unknown"):
        generate_demo(tmp_path, n_trian=3)
    with pytest.raises(DataError, match="GroundTruth"):
        load_ground_truth(tmp_path / "nowhere")


def test_params_round_trip_through_world_json(small):
    stored = json.loads((small / "demo" / "GroundTruth" / "world.json").read_text())["params"]
    assert DemoParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}) == \
        DemoParams(seed=7, **SMALL)
    assert set(stored) == {f.name for f in dataclasses.fields(DemoParams)}
