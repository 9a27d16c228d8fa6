"""Own videos and free-text queries: decoding, CLIP features, extract -> inspect -> train -> search.

Nothing is downloaded: videos are drawn here with PyAV (moving coloured squares at several
lengths and frame rates, plus files that do not decode), and the CLIP model is a tiny randomly
initialised ``transformers.CLIPModel`` with a word-level tokenizer built in memory.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason='the video extra is not installed: pip install -e ".[video]"')
transformers = pytest.importorskip("transformers", reason='the video extra is not installed')

import torch  # noqa: E402

from ralbook.cli import build_parser, main
from ralbook.video.clip import ClipEncoder, ModelUnavailableError, load_clip, require_transformers
from ralbook.data.demo import file_digests
from ralbook.errors import RalbookError
from ralbook.video.extract import extract, read_captions, read_video_times
from ralbook.retrieval.moments import frames_to_seconds, moment_of, peak_span, rows_to_frames
from ralbook.cli.search import run_search
from ralbook.video.decode import Sampling, VideoReadError, decode, list_videos, pick_frames, require_av, unique_ids, video_id

IMAGE = 32
WORDS = "a the red green blue yellow square ball moves left right up down slowly fast person".split()
# (name, frames, fps, colour, codec, container extension)
VIDEOS = [
    ("red_left", 24, 8, (220, 30, 30), "mpeg4", ".mp4"),
    ("green up", 30, 10, (30, 200, 40), "libx264", ".mkv"),
    ("blue_right", 12, 4, (40, 40, 230), "mpeg4", ".avi"),
    ("yellow", 40, 20, (230, 220, 30), "libvpx", ".webm"),
    ("red_down", 18, 6, (220, 30, 30), "mpeg4", ".mp4"),
    ("green_fast", 50, 25, (30, 200, 40), "libx264", ".mp4"),
    ("blue_slow", 9, 3, (40, 40, 230), "mpeg4", ".mp4"),
]
CAPTIONS = """red_left\ta red square moves left\ttrain
red_left.mp4\tthe red square moves slowly\ttrain
green up\ta green square moves up\ttrain
blue_right\ta blue square moves right\ttrain
yellow\ta yellow ball moves fast\ttrain
red_down\ta red square moves down\tval
green_fast\ta green square moves fast\tval
blue_slow\ta blue square moves slowly\ttest
blue_slow\tthe blue ball moves\ttest
broken\ta broken file\ttest
"""


def write_video(path: Path, n_frames: int, fps: int, colour: tuple[int, int, int], codec: str,
                width: int = 64, height: int = 48) -> None:
    """A square of ``colour`` sliding from left to right over a grey background."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            img = np.full((height, width, 3), 90, np.uint8)
            x = int(i * (width - 16) / max(n_frames - 1, 1))
            img[16:32, x:x + 16] = colour
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def tiny_encoder(dim: int = 512) -> ClipEncoder:
    """A randomly initialised CLIP (one layer per tower) and a whitespace word tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                      special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                                     bos_token="<bos>", eos_token="<eos>", model_max_length=16)
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=2, eos_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IMAGE, patch_size=16),
        projection_dim=dim)
    return ClipEncoder(transformers.CLIPModel(config), tokenizer, "cpu", "tiny-test-clip", "none")


@pytest.fixture(scope="module")
def encoder(one_thread) -> ClipEncoder:
    return tiny_encoder()


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    for name, n, fps, colour, codec, ext in VIDEOS:
        write_video(d / f"{name}{ext}", n, fps, colour, codec)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    (d / "notes.txt").write_text("not a video")  # ignored: not a video extension
    (d.parent / f"{d.name}_captions.tsv").write_text(CAPTIONS)
    return d


@pytest.fixture(scope="module")
def extracted(video_dir, encoder, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("data") / "mine"
    summary = extract(video_dir, out, encoder, Sampling(fps=2.0), captions=video_dir.parent / f"{video_dir.name}"
                      "_captions.tsv", batch_size=5, progress=False)
    return out, summary


# ----------------------------------------------------------------------------- frames

def test_sampling_targets_and_frame_choice():
    assert np.allclose(Sampling(fps=None, per_video=4).even_targets(2.0), [0.25, 0.75, 1.25, 1.75])
    times = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert pick_frames(times, np.array([0.0, 0.5, 1.0])) == [0, 2, 4]
    assert pick_frames(times, np.array([0.1, 0.2, 0.3])) == [1, 2]      # first frame at or after; repeats kept once
    assert pick_frames(times, np.array([5.0])) == [4]                    # past the end: the last frame
    for bad in (dict(fps=None, per_video=None), dict(fps=1.0, per_video=3), dict(fps=0.0), dict(fps=None, per_video=0)):
        with pytest.raises(RalbookError):
            Sampling(**bad)


@pytest.mark.parametrize("seed", range(5))
def test_one_pass_sampling_by_time_equals_the_first_frame_after_each_time(seed):
    from ralbook.video.decode import _ByTime

    rng = np.random.default_rng(seed)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.6, 80))])   # irregular frame times
    fps = float(rng.uniform(0.3, 12.0))
    keep = _ByTime(fps)
    one_pass = [i for i, t in enumerate(times) if keep(i, float(t))]
    targets = np.arange(int(np.floor(times[-1] * fps)) + 1) / fps           # the sampling times up to the last frame
    assert one_pass == pick_frames(times, targets)


def test_decode_samples_by_time_and_keeps_the_picture(video_dir):
    # red_left: 24 frames at 8 fps = 3 s; at 2 fps the frames at 0, 0.5, ..., 2.5 s
    got = decode(video_dir / "red_left.mp4", Sampling(fps=2.0), IMAGE)
    assert got.frames.shape == (6, IMAGE, IMAGE, 3) and got.frames.dtype == np.uint8
    assert np.allclose(got.times, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert got.duration == pytest.approx(3.0) and got.native_fps == pytest.approx(8.0)
    # the square is red and slides right: the centre of its red pixels moves right with time
    redness = got.frames[..., 0].astype(int) - got.frames[..., 1].astype(int)
    assert redness.max() > 80
    centres = [np.nonzero(r > 60)[1].mean() for r in redness]
    assert np.all(np.diff(centres) > 0)
    even = decode(video_dir / "yellow.webm", Sampling(fps=None, per_video=4), IMAGE)
    assert np.allclose(even.times, [0.25, 0.75, 1.25, 1.75], atol=0.051)  # 20 fps: within one frame


def test_unreadable_and_empty_files_raise_a_video_error(video_dir, tmp_path):
    with pytest.raises(VideoReadError, match="broken.mp4"):
        decode(video_dir / "broken.mp4", Sampling(), IMAGE)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty.mp4"):
        decode(empty, Sampling(), IMAGE)


def test_listing_ids_and_list_files(video_dir, tmp_path):
    found = list_videos(video_dir)
    assert len(found) == len(VIDEOS) + 1 and all(p.suffix != ".txt" for p in found)
    assert video_id(Path("green up.mkv")) == "green_up" and video_id(Path("a#b.mp4")) == "a_b"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my two videos\n{video_dir / 'yellow.webm'}\n\n{video_dir / 'red_left.mp4'}\n")
    assert [p.name for p in list_videos(listing)] == ["yellow.webm", "red_left.mp4"]
    with pytest.raises(RalbookError, match="already used"):
        unique_ids([Path("x/a.mp4"), Path("y/a.webm")])
    with pytest.raises(RalbookError, match="no such folder"):
        list_videos(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RalbookError, match="no video files found"):
        extract(tmp_path / "empty", tmp_path / "out", tiny_encoder(), Sampling(), progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.webm").write_bytes(b"nonsense")
    with pytest.raises(RalbookError, match="none of the 1 video files could be read"):
        extract(tmp_path / "bad", tmp_path / "out2", tiny_encoder(), Sampling(), progress=False)


def test_captions_file_format(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("v1\tA  dog\nv1.mp4\ta cat\tval\n# comment\n\nv 2\tx\n")
    caps = read_captions(path)
    assert [(c.cap_id, c.text, c.split) for c in caps] == [
        ("v1#enc#0", "A dog", "test"), ("v1#enc#1", "a cat", "val"), ("v_2#enc#0", "x", "test")]
    path.write_text("v1 no tab here\n")
    with pytest.raises(RalbookError, match="line 1"):
        read_captions(path)
    path.write_text("v1\ttext\tdev\n")
    with pytest.raises(RalbookError, match="split 'dev'"):
        read_captions(path)


# ----------------------------------------------------------------------------- encoders

def test_token_features_end_in_clips_pooled_sentence_feature(encoder):
    texts = ["a red square moves left", "ball", "the blue person moves up slowly fast"]
    out = encoder.encode_texts(texts)
    enc = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = encoder.model.get_text_features(**enc)
    pooled = getattr(pooled, "pooler_output", pooled).numpy()  # transformers 5 returns an output object
    for i, (text, tf) in enumerate(zip(texts, out)):
        assert tf.features.shape == (len(text.split()) + 2, 512)         # start, one per word, end
        assert tf.tokens == ["<bos>"] + text.split() + ["<eos>"]
        np.testing.assert_allclose(tf.features[-1], pooled[i], rtol=1e-5, atol=1e-5)
    # padding does not change a caption's rows: encoded alone, "ball" gives the same features
    np.testing.assert_allclose(encoder.encode_texts(["ball"])[0].features, out[1].features, rtol=1e-5, atol=1e-6)


def test_frame_features_equal_clips_image_features(encoder):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, IMAGE, IMAGE, 3), dtype=np.uint8)
    got = encoder.encode_frames(frames)
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    pixels = torch.tensor(((frames / 255.0 - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        want = encoder.model.get_image_features(pixel_values=pixels)
    want = getattr(want, "pooler_output", want).numpy()
    assert got.shape == (3, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_missing_model_names_the_model_the_revision_and_the_cache(tmp_path):
    cache = tmp_path / "hub-cache"
    with pytest.raises(ModelUnavailableError) as err:
        load_clip("openai/clip-vit-base-patch32", "main", cache_dir=str(cache), offline=True)
    message = str(err.value)
    assert "openai/clip-vit-base-patch32" in message and "'main'" in message and str(cache) in message
    assert "\n" not in message


def test_the_cli_reports_a_missing_model_in_one_line(video_dir, tmp_path, capsys):
    code = main(["extract", "--videos", str(video_dir), "--out", str(tmp_path / "c"), "--offline",
                 "--cache-dir", str(tmp_path / "empty-cache"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "openai/clip-vit-base-patch32" in err


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    for need in (require_av, require_transformers):
        with pytest.raises(RalbookError, match=r'pip install -e "\.\[video\]"'):
            need()


# ----------------------------------------------------------------------------- extract

def test_extract_writes_the_release_layout(extracted, video_dir):
    out, summary = extracted
    assert sorted(summary.encoded) == sorted(video_id(Path(v[0])) for v in VIDEOS)
    assert list(summary.failed) == ["broken"] and summary.dropped_captions == 1
    feature_dir = out / "FeatureData" / "clip"
    ids = (feature_dir / "id.txt").read_text().split()
    v2f = eval((feature_dir / "video2frames.txt").read_text())  # the release writes a Python dict literal
    # at 2 fps a video of n frames at r fps gives ceil(2 n / r) rows (times 0, 0.5, ... < duration)
    expected = {video_id(Path(name)): int(np.ceil(2 * n / fps)) for name, n, fps, *_ in VIDEOS}
    assert {v: len(f) for v, f in v2f.items()} == expected
    rows, dim = map(int, (feature_dir / "shape.txt").read_text().split())
    assert (rows, dim) == (sum(expected.values()), 512) and len(ids) == rows
    assert (feature_dir / "feature.bin").stat().st_size == rows * dim * 4
    text = out / "TextData"
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        lines = (text / f"mine{split}.caption.txt").read_text().splitlines()
        assert len(lines) == n and all("#enc#" in line for line in lines)
    import h5py
    with h5py.File(text / "roberta_mine_query_feat.hdf5") as f:
        assert f["red_left#enc#1"].shape == (7, 512)            # <bos> the red square moves slowly <eos>
    words = json.loads((text / "mine_words.json").read_text())
    assert words["blue_slow#enc#1"] == ["<bos>", "the", "blue", "ball", "moves", "<eos>"]
    times = read_video_times(out)
    assert times["red_left"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    info = json.loads((out / "extract.json").read_text())
    assert info["encoder"]["model"] == "tiny-test-clip" and "broken" in info["failed"]


def test_features_on_disk_are_the_encoders_output(extracted, video_dir, encoder):
    from ralbook.data.collection import Collection

    out, _ = extracted
    collection = Collection(out.parent, "mine")
    frames = decode(video_dir / "blue_right.avi", Sampling(fps=2.0), IMAGE).frames
    np.testing.assert_allclose(collection.raw_frames("blue_right"), encoder.encode_frames(frames), atol=1e-5)
    np.testing.assert_allclose(collection.text_features("green_up#enc#0"),
                               encoder.encode_texts(["a green square moves up"])[0].features, atol=1e-5)


def test_an_interrupted_extraction_resumes_and_ends_identical(extracted, video_dir, encoder, tmp_path):
    reference, _ = extracted
    out = tmp_path / "mine"
    captions = video_dir.parent / f"{video_dir.name}_captions.tsv"
    seen = []

    def stop_after_three(vid: str) -> None:
        seen.append(vid)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(video_dir, out, encoder, Sampling(fps=2.0), captions, batch_size=5, progress=False,
                on_video=stop_after_three)
    assert not (out / "FeatureData").exists()
    again = extract(video_dir, out, encoder, Sampling(fps=2.0), captions, batch_size=5, progress=False)
    assert sorted(again.skipped) == sorted(seen) and not set(again.encoded) & set(seen)
    assert len(again.encoded) == len(VIDEOS) - 3
    want = {k: v for k, v in file_digests(reference).items() if not k.startswith(".extract")}
    got = {k: v for k, v in file_digests(out).items() if not k.startswith(".extract")}
    # videos.json names the source files, which are the same here
    assert got == want
    third = extract(video_dir, out, encoder, Sampling(fps=2.0), captions, batch_size=5, progress=False)
    assert not third.encoded and len(third.skipped) == len(VIDEOS)
    with pytest.raises(RalbookError, match="other settings"):
        extract(video_dir, out, encoder, Sampling(fps=1.0), captions, progress=False)


class CountingEncoder:
    """Wraps an encoder and records the size of every frame batch."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []
        self.image_size, self.encode_texts, self.describe = inner.image_size, inner.encode_texts, inner.describe

    def encode_frames(self, frames):
        self.batches.append(len(frames))
        return self.inner.encode_frames(frames)


def test_a_batch_never_spans_videos_and_starts_at_a_fixed_offset(extracted, video_dir, encoder, tmp_path):
    from ralbook.data.collection import Collection

    reference, summary = extracted   # batch size 5
    counting = CountingEncoder(encoder)
    extract(video_dir, tmp_path / "mine", counting, Sampling(fps=2.0), batch_size=4, progress=False)
    per_video = [len(t) for t in read_video_times(reference).values()]
    # each video: full batches of 4, then its remainder; computed from the frame counts alone
    want = sorted(b for n in per_video for b in [4] * (n // 4) + ([n % 4] if n % 4 else []))
    assert sorted(counting.batches) == want and sum(counting.batches) == summary.n_frames
    a, b = Collection(reference.parent, "mine"), tmp_path / "mine" / "FeatureData" / "clip"
    rows = np.fromfile(b / "feature.bin", dtype=np.float32).reshape(-1, 512)
    for vid in a.frames.video_ids():
        np.testing.assert_allclose(rows[a.frames.index.rows(vid)], a.raw_frames(vid), rtol=1e-4, atol=1e-5)


def test_a_videos_rows_are_the_same_bytes_alone_and_among_other_videos(extracted, video_dir, encoder, tmp_path):
    """The property behind a resume ending identical: a frame's bytes depend on its own video and the
    batch size only, not on the videos extracted before it (checked with the real tiny image tower)."""
    import shutil

    from ralbook.data.collection import Collection

    reference, _ = extracted
    among = Collection(reference.parent, "mine")
    for name, _, _, _, _, ext in VIDEOS[2:5]:
        alone_dir = tmp_path / f"only_{video_id(Path(name))}"
        alone_dir.mkdir()
        shutil.copy(video_dir / f"{name}{ext}", alone_dir / f"{name}{ext}")
        out = tmp_path / "alone" / alone_dir.name
        extract(alone_dir, out, encoder, Sampling(fps=2.0), batch_size=5, progress=False)
        alone = np.fromfile(out / "FeatureData" / "clip" / "feature.bin", dtype=np.float32)  # its rows only
        assert alone.tobytes() == among.raw_frames(video_id(Path(name))).tobytes(), name


def test_a_video_that_fails_part_way_leaves_no_rows_in_the_batch():
    from ralbook.video.extract import _FrameBatcher

    class Sum:
        def encode_frames(self, frames):
            return frames.reshape(len(frames), -1).sum(axis=1, keepdims=True).astype(np.float32)

    batcher = _FrameBatcher(Sum(), 2)
    for vid, value in (("b", 2), ("a", 1), ("a", 3), ("a", 4)):   # a: one full batch encoded, one frame pending
        batcher.add(vid, np.full((1, 1, 1), value, np.uint8))
    assert batcher.pending("a") and not batcher.pending("b")
    batcher.drop("a")
    assert not batcher.pending("a")
    batcher.add("c", np.full((1, 1, 1), 5, np.uint8))
    batcher.flush()
    assert batcher.take("b").ravel().tolist() == [2.0] and batcher.take("c").ravel().tolist() == [5.0]
    assert "a" not in batcher.rows


def test_without_captions_only_frames_are_written(video_dir, encoder, tmp_path):
    summary = extract(video_dir, tmp_path / "plain", encoder, Sampling(fps=None, per_video=3), progress=False)
    assert summary.n_frames == 3 * len(VIDEOS)
    assert not (tmp_path / "plain" / "TextData" / "roberta_plain_query_feat.hdf5").exists()


# ----------------------------------------------------------------------------- inspect, train, search

@pytest.fixture(scope="module")
def trained(extracted, tmp_path_factory):
    from ralbook.config import preset
    from ralbook.training.trainer import train

    out, _ = extracted
    cfg = preset("clip", data={"data_root": str(out.parent), "collection": "mine", "num_workers": 0},
                 model={"hidden_size": 32, "n_heads": 2},
                 train={"n_epoch": 1, "batch_size": 3, "device": "cpu", "hard_negative_start_epoch": 0})
    run_dir = tmp_path_factory.mktemp("runs") / "clip"
    train(cfg, run_dir, progress=False)
    return run_dir


def test_inspect_accepts_the_extracted_collection(extracted, capsys):
    out, _ = extracted
    assert main(["inspect", "--data-root", str(out.parent), "--collection", "mine", "--no-progress"]) == 0
    assert "passed all checks" in capsys.readouterr().out


def test_the_clip_preset_trains_on_it(trained):
    metrics = json.loads((trained / "test_metrics.json").read_text())
    assert metrics["n_videos"] == 1 and metrics["n_queries"] == 2


def test_search_ranks_every_video_and_names_a_moment_in_seconds(trained, extracted, encoder, capsys):
    out, _ = extracted
    args = build_parser().parse_args(["search", "--checkpoint", str(trained / "best.pt"), "--data-root",
                                      str(out.parent), "--collection", "mine", "--query", "a red square moves",
                                      "--top", "3", "--no-progress"])
    assert run_search(args, encoder=encoder) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query: 'a red square moves'" and len(lines) == 4
    times = read_video_times(out)
    scores = []
    for line in lines[1:]:
        parts = line.split()
        vid, score, start, end = parts[1], float(parts[3]), *map(float, parts[6].split("-"))
        scores.append(score)
        assert vid in times and 0.0 <= start < end <= times[vid][-1] + 0.5 + 1e-6
    assert scores == sorted(scores, reverse=True)
    args.split = "val"
    run_search(args, encoder=encoder)
    assert {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]} == {"red_down", "green_fast"}
    args.top = 0
    with pytest.raises(RalbookError, match="top 0"):
        run_search(args, encoder=encoder)


def test_search_on_the_command_line_loads_the_collections_own_model(trained, extracted, capsys):
    out, _ = extracted
    code = main(["search", "--checkpoint", str(trained / "best.pt"), "--data-root", str(out.parent),
                 "--collection", "mine", "--query", "a red square", "--offline", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'tiny-test-clip'" in err   # from extract.json


def test_cli_extract_then_search_a_collection_without_captions(trained, video_dir, encoder, tmp_path, monkeypatch,
                                                              capsys):
    for where in ("ralbook.cli.extract", "ralbook.cli.search", "ralbook.retrieval.search"):
        monkeypatch.setattr(f"{where}.load_clip", lambda *args, **kwargs: encoder)
    out = tmp_path / "data" / "plain"
    assert main(["extract", "--videos", str(video_dir), "--out", str(out), "--frames-per-video", "3",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(VIDEOS)} videos encoded" in printed and "failed broken" in printed
    assert main(["search", "--checkpoint", str(trained / "best.pt"), "--data-root", str(out.parent),
                 "--collection", "plain", "--query", "a blue square", "--top", "20", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(VIDEOS)                                   # every video ranked, none twice
    assert {line.split()[1] for line in lines[1:]} == {video_id(Path(v[0])) for v in VIDEOS}


def test_search_refuses_a_text_encoder_of_another_size(trained, extracted):
    out, _ = extracted
    args = build_parser().parse_args(["search", "--checkpoint", str(trained / "best.pt"), "--data-root",
                                      str(out.parent), "--collection", "mine", "--query", "a", "--no-progress"])
    with pytest.raises(RalbookError, match="text features of size 512.* gives 48"):
        run_search(args, encoder=tiny_encoder(dim=48))


def test_search_over_an_index_matches_search_over_the_collection(trained, extracted, encoder, tmp_path, capsys):
    """An index of the train split, searched with K covering it, prints what encoding every video prints;
    the index remembers the collection's CLIP model, so it needs no collection folder to find it."""
    out, _ = extracted
    ckpt, index = str(trained / "best.pt"), tmp_path / "idx"
    data = ["--data-root", str(out.parent), "--collection", "mine", "--no-progress"]
    assert main(["index", "--checkpoint", ckpt, "--split", "train", "--out", str(index)] + data) == 0
    assert json.loads((index / "manifest.json").read_text())["encoder"]["model"] == "tiny-test-clip"
    capsys.readouterr()
    query = ["--query", "a red square moves", "--top", "3"]
    run_search(build_parser().parse_args(["search", "--checkpoint", ckpt, "--split", "train"] + query + data),
               encoder=encoder)
    want = capsys.readouterr().out
    args = build_parser().parse_args(["search", "--checkpoint", ckpt, "--index", str(index)] + query + data)
    assert run_search(args, encoder=encoder) == 0
    assert capsys.readouterr().out == want and len(want.splitlines()) == 4 and " s (frames " in want
    args.data_root, args.split = str(tmp_path / "nowhere"), None  # moments in frame rows, no seconds
    run_search(args, encoder=encoder)
    assert "best moment frames " in capsys.readouterr().out
    code = main(["search", "--checkpoint", ckpt, "--index", str(index), "--data-root", str(tmp_path / "nowhere"),
                 "--offline", "--no-progress"] + query)
    assert code == 2 and "'tiny-test-clip'" in capsys.readouterr().err  # the model named in the index
    args.split = "val"
    with pytest.raises(RalbookError, match="indexes split 'train', not 'val'"):
        run_search(args, encoder=encoder)


def test_the_notebook_text_box_ranks_and_draws(trained, extracted, encoder, capsys):
    from ralbook.data.collection import Collection
    from ralbook.retrieval.search import free_text_explorer
    from ralbook.training.rundir import load_run

    out, _ = extracted
    _, model = load_run(trained)
    view = Collection(out.parent, "mine")
    box, render = free_text_explorer(model, view, view.videos("train"), encoder, read_video_times(out), top=2)
    assert render("   ") == []
    hits = render("a yellow ball")
    printed = capsys.readouterr().out
    assert len(hits) == 2 and "query: 'a yellow ball'" in printed and hits[0].video in printed
    assert hits[0].similarity.shape[0] == len(hits[0].confidence) == 5        # <bos> a yellow ball <eos>


def test_the_notebook_finds_no_text_encoder_for_other_collections(extracted, tmp_path):
    from ralbook.retrieval.search import collection_text_encoder

    out, _ = extracted
    assert collection_text_encoder(tmp_path)[0] is None
    encoder, why = collection_text_encoder(out)   # extract.json names the test model, which no cache holds
    assert encoder is None and "tiny-test-clip" in why


# ----------------------------------------------------------------------------- the moment

def test_peak_span_rows_frames_and_seconds():
    assert peak_span(np.array([0.0, 0.1, 0.9, 1.0, 0.6, 0.2, 0.8])) == (2, 3)   # median 0.6, level 0.8
    assert peak_span(np.array([1.0, 0.0, 0.0])) == (0, 0)
    assert rows_to_frames(3, 5, 100, 128) == (3, 5)
    # 256 frames in 128 rows: row i averages frames 2i and 2i+1
    assert rows_to_frames(3, 5, 256, 128) == (6, 11)
    assert frames_to_seconds(1, 2, [0.0, 0.5, 1.0, 1.5]) == (0.5, 1.5)
    assert frames_to_seconds(2, 3, [0.0, 0.5, 1.0, 1.5]) == (1.0, 2.0)       # last frame: one step past
    sim = np.array([[0.0, 0.2, 0.9, 0.8, 0.1], [0.0, 0.0, 0.1, 0.9, 0.0]])
    m = moment_of(sim, np.array([0.5, 0.5]), 5, 128, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert (m.first_frame, m.last_frame, m.start_s, m.end_s) == (2, 3, 2.0, 4.0)
