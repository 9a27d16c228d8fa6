"""Data layer: release-layout readers, docs/method.md#inputs preprocessing, datasets/collates, validation, inspect."""
from __future__ import annotations

import pickle
import tracemalloc
import warnings

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from layout import (random_spec, replace_text_dataset, rewrite_rows, write_layout, write_random_collection)
from ralbook.cli import main as cli_main
from ralbook.config import DataConfig
from ralbook.data.collection import Collection, caption_leaks
from ralbook.data.datasets import QueryDataset, TrainDataset, VideoDataset, collate_queries, collate_train, collate_videos
from ralbook.data.features import bin_rows, convert_bin_to_hdf5, l2_normalize, query_input, video_inputs
from ralbook.errors import DataError
from ralbook.data.features import bin_edges


def open_tiny(spec, **kwargs) -> Collection:
    return Collection(spec.root, spec.name, spec.feature, **kwargs)


# ----------------------------------------------------------------------------- preprocessing

def loop_bin(x: np.ndarray, k: int) -> np.ndarray:
    """docs/method.md#inputs written out literally, one bin at a time, in float64."""
    n = len(x)
    b = [min(int(np.round(i * n / k)), n - 1) for i in range(k + 1)]
    return np.stack([x[b[i]:b[i + 1]].astype(np.float64).mean(0) if b[i] < b[i + 1] else x[b[i]]
                     for i in range(k)])


def test_bin_five_rows_into_32_clips_by_hand():
    # b_i = round(5 i / 32): e.g. i=3 -> 0.47 -> 0, i=4 -> 0.625 -> 1, i=16 -> 2.5 -> 2 (half to even),
    # i=29 -> 4.53 -> 5, capped to n-1 = 4. Every non-empty bin holds one row, so clip i = row b_i.
    expected_rows = [0] * 4 + [1] * 6 + [2] * 7 + [3] * 6 + [4] * 9
    assert bin_edges(5, 32)[:-1].tolist() == expected_rows
    assert bin_edges(5, 32)[16] == 2
    x = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(bin_rows(x, 32)[:, 0], np.array(expected_rows, np.float32))
    clip, frames = video_inputs(x)
    assert clip.shape == (32, 3) and frames.shape == (5, 3)  # 5 <= 128 frames: kept, only normalised


def test_bin_300_rows_into_128_by_hand():
    # 300 / 128 = 2.34375: b_1 = round(2.34) = 2, b_2 = round(4.69) = 5 -> bins {0,1}, {2,3,4};
    # b_15 = round(35.16) = 35, b_16 = round(37.5) = 38 (half to even), b_17 = round(39.84) = 40;
    # b_127 = round(297.66) = 298, b_128 = min(300, 299) = 299: the last bin is row 298 alone, row 299 unused.
    x = np.arange(300, dtype=np.float32)[:, None]
    out = bin_rows(x, 128)[:, 0]
    assert out[0] == 0.5 and out[1] == 3.0
    assert out[15] == 36.0 and out[16] == 38.5
    assert out[127] == 298.0 and out.max() == 298.0
    _, frames = video_inputs(np.repeat(x, 2, axis=1))
    assert frames.shape == (128, 2)


def test_128_rows_kept_as_frames_and_binned_to_32_clips():
    x = np.random.default_rng(0).standard_normal((128, 4)).astype(np.float32)
    clip, frames = video_inputs(x)
    np.testing.assert_array_equal(frames, l2_normalize(x))
    # b_i = 4 i except b_32 = min(128, 127) = 127: the last clip averages rows 124..126 only.
    expected_last = x[124:127].mean(0)
    np.testing.assert_allclose(clip[-1], expected_last / (np.linalg.norm(expected_last) + 1e-5), rtol=1e-6)


def test_single_row_video():
    x = np.array([[3.0, 4.0]], np.float32)
    clip, frames = video_inputs(x)
    unit = np.array([3.0, 4.0]) / (5.0 + 1e-5)
    np.testing.assert_allclose(clip, np.tile(unit, (32, 1)), rtol=1e-6)
    np.testing.assert_allclose(frames, unit[None], rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_bin_rows_equals_the_literal_formula(seed):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        n, k = int(rng.integers(1, 500)), int(rng.choice([32, 128, 7, 1, 100]))
        x = rng.standard_normal((n, 5)).astype(np.float32)
        np.testing.assert_allclose(bin_rows(x, k), loop_bin(x, k), rtol=1e-5, atol=1e-6)


def test_frames_binned_only_above_128():
    rng = np.random.default_rng(1)
    for n in (127, 128, 129, 400):
        x = rng.standard_normal((n, 3)).astype(np.float32)
        _, frames = video_inputs(x)
        want = loop_bin(x, 128) if n > 128 else x
        np.testing.assert_allclose(frames, want / (np.linalg.norm(want, axis=1, keepdims=True) + 1e-5), rtol=1e-5)


def test_l2_normalize_eps_and_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(out[0], [3 / (5 + 1e-5), 4 / (5 + 1e-5)], rtol=1e-7)
    assert np.all(out[1] == 0) and out.dtype == np.float32


def test_query_input_normalises_then_keeps_30():
    raw = np.random.default_rng(2).standard_normal((45, 6)).astype(np.float32)
    q = query_input(raw)
    assert q.shape == (30, 6)
    np.testing.assert_allclose(q, raw[:30] / (np.linalg.norm(raw[:30], axis=1, keepdims=True) + 1e-5), rtol=1e-6)
    assert query_input(raw[:4]).shape == (4, 6)


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("variant,row_order", [("bin", "contiguous"), ("bin", "shuffled"), ("hdf5", "contiguous")])
def test_round_trip_exact(tmp_path, variant, row_order):
    spec = write_random_collection(tmp_path, variant=variant, row_order=row_order, seed=3)
    coll = open_tiny(spec)
    assert coll.frames.variant == variant
    assert (coll.visual_dim, coll.text_dim) == (8, 6)
    for split in ("train", "val", "test"):
        assert coll.videos(split) == spec.videos(split)
        assert coll.captions(split) == spec.captions[split]
    for video, rows in spec.frames.items():
        got = coll.raw_frames(video)
        assert got.dtype == np.float32 and type(got) is np.ndarray
        np.testing.assert_array_equal(got, rows)
        assert coll.n_frames(video) == len(rows)
    for cap, rows in spec.text.items():
        np.testing.assert_array_equal(coll.text_features(cap), rows)
        assert coll.video_of(cap) == cap.split("#")[0]
        assert coll.words(cap) == spec.words[cap]
    assert coll.words("no#such#caption") is None
    coll.validate(progress=False)


def test_video_order_is_first_appearance(tmp_path):
    spec = random_spec(tmp_path, seed=4)
    # move the last caption line to the top: its video becomes the first video of the split
    spec.captions["train"] = [spec.captions["train"][-1]] + spec.captions["train"][:-1]
    write_layout(spec)
    first = spec.captions["train"][0][0].split("#")[0]
    assert first != spec.videos("train")[1] and open_tiny(spec).videos("train")[0] == first


def test_from_config(tiny_collection):
    spec = tiny_collection
    cfg = DataConfig(data_root=str(spec.root), collection=spec.name, feature=spec.feature, max_frames=64, n_clips=16)
    coll = Collection.from_config(cfg)
    assert (coll.n_clips, coll.max_frames, coll.max_desc_len) == (16, 64, 30)
    long_video = next(v for v, r in spec.frames.items() if len(r) > 64)
    clip, frames = coll.video_arrays(long_video)
    assert clip.shape[0] == 16 and frames.shape[0] == 64


def test_default_feature_per_collection(tmp_path):
    write_random_collection(tmp_path, name="tvr", feature="i3d_resnet")
    assert Collection(tmp_path, "tvr").feature == "i3d_resnet"
    other = write_random_collection(tmp_path, name="mine", feature="clipfeat")
    assert Collection(tmp_path, "mine").feature == "clipfeat"  # the only folder under FeatureData
    (other.dir / "FeatureData" / "second").mkdir()
    with pytest.raises(DataError, match="--feature"):
        Collection(tmp_path, "mine")


# ----------------------------------------------------------------------------- memory mapping

def test_reading_one_video_does_not_load_the_file(tmp_path):
    n_rows, dim = 8192, 1024  # 32 MiB feature.bin
    spec = random_spec(tmp_path, seed=5, dv=dim)
    video = next(v for v, r in spec.frames.items() if len(r) == 31)
    rows = spec.frames[video]
    filler = np.full((n_rows - sum(len(r) for r in spec.frames.values()), dim), 0.5, np.float32)
    spec.frames["filler"] = filler
    spec.frame_ids["filler"] = [f"filler_{i}" for i in range(len(filler))]
    write_layout(spec)
    assert (spec.feature_dir / "feature.bin").stat().st_size == n_rows * dim * 4
    coll = open_tiny(spec)
    coll.raw_frames("train00")  # builds the frame index once
    tracemalloc.start()
    try:
        got = coll.raw_frames(video)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(coll.frames.memmap, np.memmap)
    assert type(got) is np.ndarray and not np.shares_memory(got, coll.frames.memmap)
    np.testing.assert_array_equal(got, rows)
    assert peak < 4 * rows.nbytes + (1 << 16), f"peak {peak} B for a {rows.nbytes} B video of a 32 MiB file"


def test_dataset_pickles_without_open_handles(tiny_collection):
    coll = open_tiny(tiny_collection)
    coll.raw_frames("train00")
    coll.text_features(tiny_collection.captions["train"][0][0])
    ds = VideoDataset(coll, coll.videos("train"))
    blob = pickle.dumps(ds)
    assert len(blob) < 200_000  # the memmap and HDF5 handles are not pickled
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[0]["clip_feats"].numpy(), ds[0]["clip_feats"].numpy())


# ----------------------------------------------------------------------------- datasets and collate

def test_collate_train_shapes_masks_labels(tiny_collection):
    spec = tiny_collection
    coll = open_tiny(spec)
    videos = coll.videos("train")
    batch = collate_train([TrainDataset(coll, videos)[i] for i in range(len(videos))])
    caps = {v: [c for c, _ in spec.captions["train"] if c.split("#")[0] == v] for v in videos}
    n_q = sum(len(c) for c in caps.values())
    lengths = [min(len(spec.text[c]), 30) for v in videos for c in caps[v]]
    assert batch["video_ids"] == videos
    assert batch["cap_ids"] == [c for v in videos for c in caps[v]]
    assert batch["clip_feats"].shape == (len(videos), 32, 8)
    assert batch["frame_feats"].shape == (len(videos), 128, 8) and batch["frame_mask"].shape == (len(videos), 128)
    assert batch["query_feats"].shape == (n_q, max(lengths), 6) and batch["query_mask"].shape == (n_q, max(lengths))
    assert batch["frame_mask"].sum(1).tolist() == [min(len(spec.frames[v]), 128) for v in videos]
    assert batch["query_mask"].sum(1).tolist() == lengths
    assert set(batch["frame_mask"].unique().tolist()) <= {0.0, 1.0} and batch["frame_mask"].dtype == torch.float32
    assert torch.all(batch["frame_feats"][batch["frame_mask"] == 0] == 0)
    assert torch.all(batch["query_feats"][batch["query_mask"] == 0] == 0)
    labels = batch["labels"]
    assert labels.dtype == torch.long and labels.tolist() == sorted(labels.tolist())  # contiguous per video
    assert [videos[i] for i in labels.tolist()] == [c.split("#")[0] for c in batch["cap_ids"]]
    # the first query of the first video equals its preprocessed HDF5 rows
    first = batch["cap_ids"][0]
    np.testing.assert_array_equal(batch["query_feats"][0, :lengths[0]].numpy(), query_input(spec.text[first]))


def test_collate_videos_and_queries(tiny_collection):
    spec = tiny_collection
    coll = open_tiny(spec)
    vids = coll.videos("test")
    vb = collate_videos([VideoDataset(coll, vids)[i] for i in range(len(vids))])
    assert set(vb) == {"clip_feats", "frame_feats", "frame_mask", "video_ids"}
    assert vb["frame_feats"].shape[1] == 128 and vb["video_ids"] == vids
    for i, v in enumerate(vids):
        clip, frames = video_inputs(spec.frames[v])
        np.testing.assert_array_equal(vb["clip_feats"][i].numpy(), clip)
        np.testing.assert_array_equal(vb["frame_feats"][i, :len(frames)].numpy(), frames)
    caps = [c for c, _ in spec.captions["test"]]
    qb = collate_queries([QueryDataset(coll, caps)[i] for i in range(len(caps))])
    assert qb["cap_ids"] == caps and qb["video_ids"] == [c.split("#")[0] for c in caps]
    longest = max(min(len(spec.text[c]), 30) for c in caps)
    assert qb["query_feats"].shape == (len(caps), longest, 6) and qb["query_mask"].shape == (len(caps), longest)


def test_train_dataset_uses_the_given_split(tiny_collection):
    coll = open_tiny(tiny_collection)
    with pytest.raises(DataError, match="train00"):
        TrainDataset(coll, ["train00"], split="val")  # a train video has no caption in the val file
    assert len(TrainDataset(coll, coll.videos("val"), split="val")) == 3


def test_dataloader_workers_give_the_same_batches(tiny_collection):
    coll = open_tiny(tiny_collection)
    coll.raw_frames("train00")  # handles opened in the parent must not be reused by forked workers
    coll.text_features(tiny_collection.captions["train"][0][0])
    ds = TrainDataset(coll, coll.videos("train"))
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers, collate_fn=collate_train)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 2
    for a, b in zip(batches[0], batches[2]):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


# ----------------------------------------------------------------------------- HDF5 variant

def test_convert_bin_to_hdf5_round_trip(tiny_collection, tmp_path):
    spec = tiny_collection
    out = convert_bin_to_hdf5(spec.feature_dir, tmp_path / "conv" / "feature.hdf5", progress=False)
    with h5py.File(out, "r") as f:
        assert sorted(f) == sorted(spec.frames)
    coll = open_tiny(spec, video_feature_file=out)
    assert coll.frames.variant == "hdf5"
    for video, rows in spec.frames.items():
        np.testing.assert_array_equal(coll.raw_frames(video), rows)
    # automatic choice: feature.bin when present, else feature.hdf5
    out.rename(spec.feature_dir / "feature.hdf5")
    assert open_tiny(spec).frames.variant == "bin"
    (spec.feature_dir / "feature.bin").unlink()
    auto = open_tiny(spec)
    assert auto.frames.variant == "hdf5"
    auto.validate(progress=False)


def test_hdf5_variant_errors(tmp_path):
    spec = write_random_collection(tmp_path, variant="hdf5")
    path = spec.feature_dir / "feature.hdf5"
    with h5py.File(path, "a") as f:
        del f["val01"]
        del f["test00"]
        f.create_dataset("test00", data=np.zeros((0, 8), np.float32))
    coll = open_tiny(spec)
    with pytest.raises(DataError, match=r"feature\.hdf5: video 'val01' has no dataset"):
        coll.raw_frames("val01")
    with pytest.raises(DataError, match=r"feature\.hdf5: video 'test00': expected at least one row, found 0"):
        coll.raw_frames("test00")
    with pytest.raises(DataError, match=r"val\.caption\.txt: video 'val01'.*feature\.hdf5"):
        coll.validate(["val"], progress=False)


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("relative", ["FeatureData/feat/feature.bin", "FeatureData/feat/id.txt",
                                      "FeatureData/feat/shape.txt", "FeatureData/feat/video2frames.txt",
                                      "TextData/roberta_tiny_query_feat.hdf5", "TextData/tinyval.caption.txt"])
def test_missing_file(tiny_collection, relative):
    (tiny_collection.dir / relative).unlink()
    name = relative.split("/")[-1]
    with pytest.raises(DataError, match=f"{name}: missing file; expected"):
        coll = open_tiny(tiny_collection)
        coll.raw_frames("val00")
        coll.validate(progress=False)


def test_missing_collection_and_feature_folder(tiny_collection):
    with pytest.raises(DataError, match=r"nothere: missing collection folder.*\['tiny'\]"):
        Collection(tiny_collection.root, "nothere", "feat")
    with pytest.raises(DataError, match=r"FeatureData/i3d: missing feature folder.*\['feat'\]"):
        Collection(tiny_collection.root, "tiny", "i3d")


def test_shape_disagrees_with_id_txt(tiny_collection):
    path = tiny_collection.feature_dir / "id.txt"
    ids = path.read_text(encoding="latin-1").split()
    path.write_text(" ".join(ids[:-1]), encoding="latin-1")
    with pytest.raises(DataError, match=rf"id\.txt: shape\.txt says {len(ids)} rows, id\.txt lists {len(ids) - 1}"):
        open_tiny(tiny_collection).raw_frames("train00")


def test_shape_disagrees_with_feature_bin_size(tiny_collection):
    path = tiny_collection.feature_dir / "feature.bin"
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 4)
    with pytest.raises(DataError, match=rf"feature\.bin: shape\.txt says .* = {size} bytes, the file has {size - 4}"):
        open_tiny(tiny_collection)


def test_malformed_shape_txt(tiny_collection):
    (tiny_collection.feature_dir / "shape.txt").write_text("12 by 8\n")
    with pytest.raises(DataError, match=r"shape\.txt: expected two integers"):
        open_tiny(tiny_collection)


def test_video_missing_from_video2frames(tiny_collection):
    spec = tiny_collection
    del spec.frame_ids["val01"]
    (spec.feature_dir / "video2frames.txt").write_text(repr(spec.frame_ids), encoding="latin-1")
    coll = open_tiny(spec)
    with pytest.raises(DataError, match=r"video2frames\.txt: video 'val01' is not listed"):
        coll.raw_frames("val01")
    with pytest.raises(DataError, match=r"tinyval\.caption\.txt: video 'val01' \(caption 'val01#enc#0'\) is not "
                                        r"listed in .*video2frames\.txt.*1 of the 3 videos"):
        coll.validate(["train", "val"], progress=False)
    coll.validate(["train", "test"], progress=False)  # other splits are fine


def test_frame_id_missing_from_id_txt(tiny_collection):
    spec = tiny_collection
    spec.frame_ids["test01"][1] = "ghost_frame"
    (spec.feature_dir / "video2frames.txt").write_text(repr(spec.frame_ids), encoding="latin-1")
    coll = open_tiny(spec)
    with pytest.raises(DataError, match=r"id\.txt: frame id 'ghost_frame' of video 'test01' is not listed"):
        coll.raw_frames("test01")
    np.testing.assert_array_equal(coll.raw_frames("test00"), spec.frames["test00"])  # the rest still reads
    with pytest.raises(DataError, match="ghost_frame"):
        coll.validate(progress=False)


def test_video_with_zero_frames(tiny_collection):
    spec = tiny_collection
    spec.frame_ids["train03"] = []
    (spec.feature_dir / "video2frames.txt").write_text(repr(spec.frame_ids), encoding="latin-1")
    coll = open_tiny(spec)
    with pytest.raises(DataError, match=r"video2frames\.txt: video 'train03' has zero frames"):
        coll.raw_frames("train03")
    with pytest.raises(DataError, match="'train03' has zero frames"):
        coll.validate(progress=False)


@pytest.mark.parametrize("content", ["__import__('pathlib').Path('PWNED').touch()", "{'a': ['x'], 'b': f()}",
                                     "['not', 'a', 'dict']", "{'v': 'not a list'}", "{'v': ['a', 'b',"])
def test_video2frames_not_a_plain_literal(tiny_collection, tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    (tiny_collection.feature_dir / "video2frames.txt").write_text(content)
    with pytest.raises(DataError, match=r"video2frames\.txt: .*expected"):
        open_tiny(tiny_collection).raw_frames("train00")
    assert not (tmp_path / "PWNED").exists()


def test_video2frames_in_another_literal_style(tiny_collection):
    spec = tiny_collection
    # double-quoted keys, single-quoted frame ids and a trailing comma: JSON cannot read it, ast can
    text = "{" + ", ".join(f'"{v}": {ids!r}' for v, ids in spec.frame_ids.items()) + ",}\n"
    (spec.feature_dir / "video2frames.txt").write_text(text, encoding="latin-1")
    coll = open_tiny(spec)
    for video, rows in spec.frames.items():
        np.testing.assert_array_equal(coll.raw_frames(video), rows)


def test_caption_without_text_features(tiny_collection):
    spec = tiny_collection
    cap = spec.captions["test"][1][0]
    replace_text_dataset(spec, cap, None)
    coll = open_tiny(spec)
    with pytest.raises(DataError, match=rf"roberta_tiny_query_feat\.hdf5: caption id '{cap}' has no dataset"):
        coll.text_features(cap)
    with pytest.raises(DataError, match=rf"'{cap}' has no dataset"):
        coll.validate(progress=False)


def test_text_dataset_of_wrong_width(tiny_collection):
    spec = tiny_collection
    cap = spec.captions["val"][0][0]
    replace_text_dataset(spec, cap, np.zeros((4, 7), np.float32))
    with pytest.raises(DataError, match=rf"query_feat\.hdf5: caption id '{cap}': expected shape \(rows, 6\) "
                                        r"\(the width of most datasets in the file\), found \(4, 7\)"):
        open_tiny(spec).query_array(cap)


def test_wrong_width_blames_the_odd_caption_even_when_it_comes_first(tiny_collection):
    spec = tiny_collection
    with h5py.File(spec.text_file, "r") as f:
        first = next(iter(f))   # the dataset a scan meets first
    replace_text_dataset(spec, first, np.zeros((3, 9), np.float32))
    coll = open_tiny(spec)
    assert coll.text_dim == 6
    with pytest.raises(DataError, match=rf"caption id '{first}': expected shape \(rows, 6\).*found \(3, 9\)"):
        coll.validate(progress=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_frame_rows(tiny_collection, bad):
    spec = tiny_collection
    row = np.zeros(8, np.float32)
    row[3] = bad
    rewrite_rows(spec, "val02", 1, row)
    coll = open_tiny(spec)
    frame = spec.frame_ids["val02"][1]
    with pytest.raises(DataError, match=rf"feature\.bin: video 'val02' \(frame '{frame}'\): expected finite values"):
        coll.raw_frames("val02")
    with pytest.raises(DataError, match=rf"feature\.bin: row \d+ \(frame '{frame}' of video 'val02'\)"):
        coll.validate(progress=False)
    coll.validate(["train", "test"], progress=False)  # the bad row belongs to a val video only


def test_non_finite_text_rows(tiny_collection):
    spec = tiny_collection
    cap = spec.captions["train"][2][0]
    rows = spec.text[cap].copy()
    rows[-1, 0] = np.nan
    replace_text_dataset(spec, cap, rows)
    with pytest.raises(DataError, match=rf"query_feat\.hdf5: caption id '{cap}'.*NaN or inf"):
        open_tiny(spec).text_features(cap)


def test_duplicate_ids(tiny_collection):
    spec = tiny_collection
    path = spec.caption_file("test")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    cap = lines[0].split()[0]
    with pytest.raises(DataError, match=rf"tinytest\.caption\.txt: line {len(lines) + 1}: caption id '{cap}' "
                                        r"already appears on line 1"):
        open_tiny(spec).captions("test")
    ids_path = spec.feature_dir / "id.txt"
    ids = ids_path.read_text(encoding="latin-1").split()
    ids_path.write_text(" ".join(ids[:-1] + [ids[0]]), encoding="latin-1")
    with pytest.raises(DataError, match=r"id\.txt: frame id .* is listed more than once"):
        open_tiny(spec).raw_frames("train00")


def test_empty_caption_file(tiny_collection):
    tiny_collection.caption_file("val").write_text("\n")
    with pytest.raises(DataError, match=r"tinyval\.caption\.txt: expected at least one"):
        open_tiny(tiny_collection).validate(progress=False)


# ----------------------------------------------------------------------------- summary, same captions, inspect

def test_summary_counts(tiny_collection):
    spec = tiny_collection
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distinct val and test: no warning
        summary = open_tiny(spec).summary()
    for split in ("train", "val", "test"):
        s, videos = summary.splits[split], spec.videos(split)
        assert (s.n_videos, s.n_captions) == (len(videos), len(spec.captions[split]))
        assert s.frames_per_video.tolist() == [len(spec.frames[v]) for v in videos]
        assert s.captions_per_video.tolist() == [sum(c.startswith(v + "#") for c, _ in spec.captions[split])
                                                 for v in videos]
        assert s.tokens_per_caption.tolist() == [len(spec.text[c]) for c, _ in spec.captions[split]]
        norms = np.concatenate([np.linalg.norm(spec.frames[v], axis=1) for v in videos])
        np.testing.assert_allclose(np.sort(s.frame_norms), np.sort(norms), rtol=1e-6)
    assert (summary.visual_dim, summary.text_dim) == (8, 6)
    text = summary.format()
    assert "train" in text and str(summary.splits["train"].n_captions) in text


def test_same_captions(tmp_path):
    spec = write_random_collection(tmp_path, val_equals_test=True)
    coll = open_tiny(spec)
    assert coll.same_captions("val", "test") and not coll.same_captions("train", "test")
    with pytest.warns(UserWarning, match="val and test caption files hold the same"):
        summary = coll.summary()
    assert summary.notes and "note:" in summary.format()


def test_inspect_cli_good_data(tiny_collection, capsys):
    spec = tiny_collection
    code = cli_main(["inspect", "--data-root", str(spec.root), "--collection", "tiny", "--feature", "feat",
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ok:" in out and "Dv 8, Dt 6" in out
    train_line = next(line for line in out.splitlines() if line.startswith("train"))
    assert train_line.split()[1:3] == [str(len(spec.videos("train"))), str(len(spec.captions["train"]))]


def test_inspect_cli_broken_data(tiny_collection, capsys):
    spec = tiny_collection
    replace_text_dataset(spec, spec.captions["val"][0][0], None)
    code = cli_main(["inspect", "--data-root", str(spec.root), "--collection", "tiny", "--feature", "feat",
                     "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "query_feat.hdf5" in err and spec.captions["val"][0][0] in err


def test_handles_reopen_in_a_new_process(tiny_collection, monkeypatch):
    import os

    coll = open_tiny(tiny_collection)
    cap = tiny_collection.captions["train"][0][0]
    coll.text_features(cap)
    first_map, first_h5 = coll.frames.memmap, coll.text._file.get()
    assert coll.frames.memmap is first_map and coll.text._file.get() is first_h5  # once per process
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)  # as seen from a forked DataLoader worker
    assert coll.frames.memmap is not first_map and coll.text._file.get() is not first_h5
    np.testing.assert_array_equal(coll.text_features(cap), tiny_collection.text[cap])


# ----------------------------------------------------------------------------- extreme values, duplicates, HDF5 damage

F32_MAX = np.finfo(np.float32).max


@pytest.mark.parametrize("seed", range(4))
def test_clip_averages_of_extreme_rows_stay_finite_and_exact(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    x = rng.standard_normal((n, 5)).astype(np.float32)
    hot = rng.choice(n, size=max(1, n // 7), replace=False)
    x[hot] = rng.choice([F32_MAX, -F32_MAX, F32_MAX / 3], size=(len(hot), 5)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        clip, frames = video_inputs(x)
    assert np.isfinite(clip).all() and np.isfinite(frames).all()
    # reference: the literal formula in float64, normalised in float64
    expect = loop_bin(x, 32)
    expect = expect / (np.linalg.norm(expect, axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(clip, expect, rtol=1e-5, atol=1e-6)
    norms = np.linalg.norm(frames.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms[np.linalg.norm(loop_bin(x, 128) if n > 128 else x.astype(np.float64), axis=1)
                                     > 1], 1.0, rtol=1e-5)


def test_ordinary_rows_keep_the_float32_arithmetic():
    x = np.random.default_rng(3).standard_normal((300, 16)).astype(np.float32)
    edges = bin_edges(300, 32)
    expected = np.stack([x[a:b].sum(0) / np.float32(b - a) for a, b in zip(edges[:-1], edges[1:])])
    np.testing.assert_array_equal(bin_rows(x, 32), expected)
    np.testing.assert_array_equal(l2_normalize(x), x / (np.linalg.norm(x, axis=1, keepdims=True) + np.float32(1e-5)))


@pytest.mark.parametrize("style", ["json", "ast"])
def test_duplicate_video_in_video2frames(tiny_collection, style):
    spec = tiny_collection
    items = [f"{v!r}: {ids!r}" for v, ids in spec.frame_ids.items()]
    items.insert(5, f"'train02': {spec.frame_ids['train04']!r}")   # train02 again, other frames
    text = "{" + ",\n".join(items) + ("}" if style == "json" else ",}")  # a trailing comma: only ast reads it
    (spec.feature_dir / "video2frames.txt").write_text(text + "\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"video2frames\.txt: video 'train02' is listed twice, at line 3, "
                                        r"character 1 and line 6, character 1"):
        open_tiny(spec).raw_frames("train00")


def test_duplicate_video_on_one_line_names_the_characters(tiny_collection):
    spec = tiny_collection
    (spec.feature_dir / "video2frames.txt").write_text("{'a': ['x'], 'b': ['y'], 'a': ['z']}", encoding="latin-1")
    with pytest.raises(DataError, match=r"video 'a' is listed twice, at line 1, character 2 and line 1, character 26"):
        open_tiny(spec).raw_frames("train00")


def test_non_numeric_text_dataset(tiny_collection):
    spec = tiny_collection
    cap = spec.captions["test"][0][0]
    replace_text_dataset(spec, cap, np.array([[b"a", b"b", b"c", b"d", b"e", b"f"]]))
    with pytest.raises(DataError, match=rf"query_feat\.hdf5: caption id '{cap}': expected numbers \(float32\), "
                                        r"found data of type '\|S1'"):
        open_tiny(spec).text_features(cap)


def damage_root_heap(path) -> None:
    """Overwrite the root group's local heap (where the dataset names live) with junk."""
    data = bytearray(path.read_bytes())
    at = data.find(b"HEAP")
    assert at > 0
    data[at + 4:at + 40] = b"\xff" * 36
    path.write_bytes(bytes(data))


def test_damaged_hdf5_heap_is_one_clear_error(tiny_collection):
    spec = tiny_collection
    damage_root_heap(spec.text_file)
    with pytest.raises(DataError, match=r"query_feat\.hdf5: .*damaged"):
        coll = open_tiny(spec)
        coll.validate(progress=False)


def test_long_ids_are_cut_in_messages(tiny_collection):
    spec = tiny_collection
    long_id = "v" * 1_000_000
    with pytest.raises(DataError) as err:
        open_tiny(spec).raw_frames(long_id)
    assert len(str(err.value)) < 400 and "(1000000 characters)" in str(err.value)


@pytest.mark.parametrize("bad, what", [("\x00", "control character U\\+0000"), ("\x07", "control character U\\+0007"),
                                       ("\x1b", "control character U\\+001B"), ("\x7f", "control character U\\+007F")])
def test_control_characters_in_caption_ids_are_refused(tiny_collection, bad, what):
    spec = tiny_collection
    path = spec.caption_file("train")
    lines = path.read_text(encoding="utf-8").splitlines()
    cap, text = lines[2].split(" ", 1)
    lines[2] = f"{cap}{bad}x {text}"   # with a NUL, HDF5 would cut the key back to the original id
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"tinytrain\.caption\.txt: line 3: caption id '{cap}.*' contains the {what}"):
        open_tiny(spec).captions("train")


def test_undecodable_caption_id_is_refused_but_text_is_shown(tiny_collection):
    spec = tiny_collection
    path = spec.caption_file("val")
    data = path.read_bytes().splitlines()
    cap, text = data[0].split(b" ", 1)
    path.write_bytes(b"\n".join([b"\xef\xbb\xbf" + data[0], data[1] + b" caf\xe9"] + data[2:]) + b"\n")  # BOM, Latin-1
    coll = open_tiny(spec)
    got = coll.captions("val")
    assert got[0] == (cap.decode(), text.decode()) and got[1][1].endswith(" caf\ufffd")
    path.write_bytes(b"\n".join([cap + b"\xe9 " + text] + data[1:]) + b"\n")
    with pytest.raises(DataError, match=r"tinyval\.caption\.txt: line 1: caption id .* contains bytes that are "
                                        r"not UTF-8"):
        open_tiny(spec).captions("val")


def test_caption_in_two_splits_is_reported(tmp_path):
    spec = random_spec(tmp_path)
    test_cap, test_text = spec.captions["test"][1]
    val_cap = spec.captions["val"][0][0]
    # the same id in train and val; a test caption's text again in train under another id of the same video
    spec.captions["train"].append((val_cap, spec.captions["val"][0][1]))
    twin = test_cap.split("#")[0] + "#enc#99"
    spec.captions["train"].append((twin, "  " + test_text.upper() + " "))
    spec.text[twin] = spec.text[test_cap]
    write_layout(spec)
    coll = open_tiny(spec)
    assert caption_leaks(coll, "val", "test") is None
    assert caption_leaks(coll, "train", "val") == (
        f"the train and val caption files of collection 'tiny' share 1 caption ids and 0 more captions of the same "
        f"video with the same text (of {len(spec.captions['val'])} val captions; leakage inflates metrics on val), "
        f"e.g. '{val_cap}'")
    assert caption_leaks(coll, "train", "test").endswith(
        f"share 0 caption ids and 1 more captions of the same video with the same text (of "
        f"{len(spec.captions['test'])} test captions; leakage inflates metrics on test), e.g. '{twin}' = '{test_cap}'")
    with pytest.warns(UserWarning) as record:
        summary = coll.summary()
    assert len(summary.notes) == 2 and len(record) == 2
    assert "train and val" in summary.notes[0] and "train and test" in summary.notes[1]


@pytest.mark.parametrize("seed", range(5))
def test_far_rows_flags_exactly_the_planted_rows_at_any_scale(seed):
    from ralbook.data.features import far_rows, row_norms

    rng = np.random.default_rng(seed)
    dim, n = int(rng.integers(2, 64)), int(rng.integers(50, 3000))
    for scale in (1e-20, 1.0, 1e20):
        x = (rng.standard_normal((n, dim)) * rng.uniform(0.5, 2.0, size=(n, 1)) * scale).astype(np.float32)
        assert not far_rows(row_norms(x)).any()     # ordinary spread: nothing flagged
        planted = rng.choice(n, size=int(rng.integers(1, 4)), replace=False)
        x[planted] = F32_MAX if scale <= 1 else x[planted] * 1e6
        assert np.flatnonzero(far_rows(row_norms(x))).tolist() == sorted(planted.tolist())


def test_inspect_warns_about_extreme_rows(tiny_collection, capsys):
    spec = tiny_collection
    rewrite_rows(spec, "test02", 2, np.full(8, F32_MAX, np.float32))
    cap = spec.captions["val"][1][0]
    rows = spec.text[cap].copy()
    rows[0] = 1e30
    replace_text_dataset(spec, cap, rows)
    code = cli_main(["inspect", "--data-root", str(spec.root), "--collection", "tiny", "--feature", "feat",
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    warned = [line for line in out.splitlines() if line.startswith("warning:")]
    frame = spec.frame_ids["test02"][2]
    assert len(warned) == 2
    assert f"feature.bin: 1 of {sum(len(v) for v in spec.frames.values())} frame rows have a norm far above" \
           in warned[0] and f"frame '{frame}' of video 'test02' (norm 9.62e+38)" in warned[0]
    assert "query_feat.hdf5: 1 of" in warned[1] and f"token 0 of caption '{cap}'" in warned[1]
    # and the clip averages of that video are finite, the summary's norms too (no overflow warnings)
    clip, frames = open_tiny(spec).video_arrays("test02")
    assert np.isfinite(clip).all() and np.isfinite(frames).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norms = open_tiny(spec).summary(["test"]).splits["test"].frame_norms
    assert np.isfinite(norms).all() and norms.max() == pytest.approx(np.sqrt(8) * F32_MAX, rel=1e-6)


def test_extreme_rows_in_the_hdf5_variant(tmp_path):
    spec = random_spec(tmp_path)
    spec.frames["val00"][7] = 1e35
    write_layout(spec, variant="hdf5")
    found = open_tiny(spec).validate(progress=False)
    assert len(found) == 1 and "feature.hdf5: 1 of" in found[0] and "frame 7 of video 'val00'" in found[0]


def test_inspect_warns_about_caption_lines_without_text(tiny_collection, capsys):
    """A line that holds an id and no text is a warning naming file, line and id (exit code 0), for one
    caption and for every caption of a split; inspect --help says it is a warning."""
    spec = tiny_collection
    val = spec.caption_file("val")
    lines = val.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].split()[0] + "   "                       # second line: id and trailing spaces only
    val.write_text("\n".join(lines) + "\n", encoding="utf-8")
    test = spec.caption_file("test")
    test.write_text("".join(f"{cap}\n" for cap, _ in spec.captions["test"]), encoding="utf-8")
    code = cli_main(["inspect", "--data-root", str(spec.root), "--collection", "tiny", "--feature", "feat",
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    warned = [line for line in out.splitlines() if line.startswith("warning:") and "no text" in line]
    assert len(warned) == 2
    one = next(w for w in warned if str(val) in w)
    assert f"1 of {len(spec.captions['val'])} caption lines" in one and f"line 2: {spec.captions['val'][1][0]}" in one
    every = next(w for w in warned if str(test) in w)
    n = len(spec.captions["test"])
    assert f"{n} of {n} caption lines" in every and f"line 1: {spec.captions['test'][0][0]}" in every
    assert "passed all checks" in out and "with 2 warnings" in out
    with pytest.raises(SystemExit):
        cli_main(["inspect", "--help"])
    assert "id and no text" in " ".join(capsys.readouterr().out.split())
