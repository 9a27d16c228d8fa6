"""A seeded corruption campaign over a small collection: every single corruption ends in a clear
RalbookError naming the file, or in a correct read.

Each case copies a small valid collection (tests/layout.py), applies ONE seeded corruption of one
class, then drives what a user hits: opening the collection, ``validate`` and ``summary`` (the
``inspect`` path), and reading every video's features and model inputs, every caption, its text
features and words. Any exception that is not a RalbookError fails the case (it would be a
traceback for the user).

"Correct" is decided by an independent reader written here (it shares no code with ralbook): it
parses the files the simple way and says either what a reader must give back, or that the copy
must be refused. A refusal must then come with a one-line message that names an expected file;
a read must equal the independent reader's values exactly and give finite model inputs. Some
classes also carry their own fixed expectation (a truncated feature.bin is always refused, extreme
values are always read and reported by ``validate``), checked against both.

The default run is small; ``RALBOOK_CORRUPTION_CASES=5000`` runs a larger campaign (and
``RALBOOK_CORRUPTION_SEED`` changes the seed).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import traceback
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np
import pytest

from layout import random_spec, write_layout
from ralbook.errors import RalbookError

N_CASES = int(os.environ.get("RALBOOK_CORRUPTION_CASES", "306"))
SEED = int(os.environ.get("RALBOOK_CORRUPTION_SEED", "20260"))
NAME, FEATURE, SPLITS = "tiny", "feat", ("train", "val", "test")
F32_MAX = float(np.finfo(np.float32).max)
PAYLOAD = "PWNED"       # a file that code in video2frames.txt would create


# ----------------------------------------------------------------------------- the collection under test

def build_base(root: Path, variant: str) -> Path:
    """A small valid collection (6 videos of 1 to 129 frames, Dv 8, Dt 6) in the release layout."""
    spec = random_spec(root, seed=3, n_videos=(2, 2, 2), dv=8, dt=6, name=NAME, feature=FEATURE)
    write_layout(spec, variant=variant)
    return root


def feature_dir(root: Path) -> Path:
    return root / NAME / "FeatureData" / FEATURE


def text_dir(root: Path) -> Path:
    return root / NAME / "TextData"


def text_file(root: Path) -> Path:
    return text_dir(root) / f"roberta_{NAME}_query_feat.hdf5"


def caption_file(root: Path, split: str) -> Path:
    return text_dir(root) / f"{NAME}{split}.caption.txt"


def words_file(root: Path) -> Path:
    return text_dir(root) / f"{NAME}_words.json"


def write_new(path: Path, data: bytes) -> None:
    """Replace a (hard-linked) file by a new one, leaving the base collection untouched."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def own(path: Path) -> Path:
    """Turn a hard link into a private copy before modifying the file in place (h5py 'a' mode)."""
    data = path.read_bytes()
    write_new(path, data)
    return path


# ----------------------------------------------------------------------------- the independent reader

class MustRefuse(Exception):
    """The independent reader's verdict: a reader must refuse this copy."""


def literal_dict(text: str) -> dict:
    """video2frames.txt read by walking the syntax tree: a dict of unique str keys -> lists of str, else MustRefuse."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        raise MustRefuse(f"not Python syntax: {err}") from None
    node = tree.body
    if not isinstance(node, ast.Dict):
        raise MustRefuse("not a dict")
    out: dict = {}
    for key, value in zip(node.keys, node.values):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            raise MustRefuse("a key that is not a string")
        if key.value in out:
            raise MustRefuse(f"key {key.value!r} twice")
        if not isinstance(value, (ast.List, ast.Tuple)) or \
                not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
            raise MustRefuse("a value that is not a list of strings")
        out[key.value] = [e.value for e in value.elts]
    return out


def expected_captions(root: Path) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for split in SPLITS:
        path = caption_file(root, split)
        if not path.is_file():
            raise MustRefuse(f"{path.name} missing")
        raw = path.read_bytes()
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        rows, seen = [], set()
        for line in raw.decode("utf-8", "surrogateescape").splitlines():
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            cap = parts[0]
            if any(unicodedata.category(c) in ("Cc", "Cs") for c in cap):
                raise MustRefuse("a control character or undecodable byte in a caption id")
            if cap in seen:
                raise MustRefuse(f"caption id {cap!r} twice")
            seen.add(cap)
            text = parts[1].encode("utf-8", "surrogateescape").decode("utf-8", "replace") if len(parts) > 1 else ""
            rows.append((cap, text))
        if not rows:
            raise MustRefuse(f"{path.name} has no captions")
        out[split] = rows
    return out


def expected_frames(root: Path, videos: list[str]) -> dict[str, np.ndarray]:
    fd = feature_dir(root)
    if not (fd / "feature.bin").is_file():
        return expected_frames_hdf5(fd / "feature.hdf5", videos)
    for name in ("id.txt", "shape.txt", "video2frames.txt"):
        if not (fd / name).is_file():
            raise MustRefuse(f"{name} missing")
    parts = (fd / "shape.txt").read_text(encoding="latin-1").split()
    if len(parts) != 2:
        raise MustRefuse("shape.txt does not hold two numbers")
    try:
        rows, dim = int(parts[0]), int(parts[1])
    except ValueError:
        raise MustRefuse("shape.txt does not hold two integers") from None
    if rows < 0 or dim < 1 or (fd / "feature.bin").stat().st_size != rows * dim * 4:
        raise MustRefuse("shape.txt disagrees with feature.bin")
    ids = (fd / "id.txt").read_text(encoding="latin-1").split()
    if len(ids) != rows or len(set(ids)) != rows:
        raise MustRefuse("id.txt count or uniqueness")
    v2f = literal_dict((fd / "video2frames.txt").read_text(encoding="latin-1"))
    data = np.fromfile(fd / "feature.bin", dtype="<f4").reshape(rows, dim)
    where = {f: i for i, f in enumerate(ids)}
    out = {}
    for video in videos:
        frames = v2f.get(video)
        if not frames or any(f not in where for f in frames):
            raise MustRefuse(f"video {video!r} unlisted, empty or with unknown frames")
        out[video] = data[[where[f] for f in frames]]
        if not np.isfinite(out[video]).all():
            raise MustRefuse("non-finite frame values")
    return out


def h5_rows(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Each key's dataset as float32, all 2-D, numeric, non-empty, finite and of one width, else MustRefuse."""
    if not path.is_file():
        raise MustRefuse(f"{path.name} missing")
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for key in keys:
                obj = f.get(key)
                if not isinstance(obj, h5py.Dataset) or obj.ndim != 2 or obj.dtype.kind not in "fiu" \
                        or obj.shape[0] == 0:
                    raise MustRefuse(f"dataset {key!r} missing or malformed")
                out[key] = np.asarray(obj[...], dtype=np.float32)
    except MustRefuse:
        raise
    except Exception as err:  # h5py's view of a damaged file decides: it cannot be read
        raise MustRefuse(f"h5py: {type(err).__name__}: {err}") from None
    if len({a.shape[1] for a in out.values()}) > 1:
        raise MustRefuse("datasets of different widths")
    if not all(np.isfinite(a).all() for a in out.values()):
        raise MustRefuse("non-finite values")
    return out


def expected_frames_hdf5(path: Path, videos: list[str]) -> dict[str, np.ndarray]:
    return h5_rows(path, videos)


def expected_words(root: Path) -> dict:
    path = words_file(root)
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError):
        raise MustRefuse("words file is not JSON") from None
    if not isinstance(value, dict):
        raise MustRefuse("words file is not a JSON object")
    return value


@dataclass
class Reading:
    """What a reader gives for a whole collection."""

    captions: dict[str, list[tuple[str, str]]]
    frames: dict[str, np.ndarray]
    text: dict[str, np.ndarray]
    words: dict[str, Optional[list]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)   # video -> (clips, frames)
    queries: dict[str, np.ndarray] = field(default_factory=dict)                      # caption -> query input


def independent_reading(root: Path) -> Reading:
    captions = expected_captions(root)
    videos = list(dict.fromkeys(c.split("#", 1)[0] for rows in captions.values() for c, _ in rows))
    caps = list(dict.fromkeys(c for rows in captions.values() for c, _ in rows))
    frames = expected_frames(root, videos)
    text = h5_rows(text_file(root), caps)
    words = expected_words(root)
    for cap in caps:
        w = words.get(cap)
        if w is not None and not (isinstance(w, list) and all(isinstance(x, str) for x in w)):
            raise MustRefuse("words of a caption are not a list of strings")
    return Reading(captions, frames, text, {c: words.get(c) for c in caps})


# ----------------------------------------------------------------------------- what a user runs

def ralbook_reading(root: Path) -> Reading:
    """The inspect path, then every video, caption, text feature and word list, through ralbook."""
    from ralbook.data.collection import Collection

    coll = Collection(root, NAME, FEATURE)
    try:
        found = coll.validate(SPLITS, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coll.summary(SPLITS, progress=False)
        captions = {split: coll.captions(split) for split in SPLITS}
        videos = list(dict.fromkeys(v for split in SPLITS for v in coll.videos(split)))
        frames, inputs = {}, {}
        for video in videos:
            frames[video] = coll.raw_frames(video)
            inputs[video] = coll.video_arrays(video)
        caps = list(dict.fromkeys(c for rows in captions.values() for c, _ in rows))
        text = {cap: coll.text_features(cap) for cap in caps}
        queries = {cap: coll.query_array(cap) for cap in caps}
        words = {cap: coll.words(cap) for cap in caps}
        return Reading(captions, frames, text, words, found, inputs, queries)
    finally:
        coll.close()


# ----------------------------------------------------------------------------- corruptions

@dataclass
class Case:
    """One corruption: its class, what was done, files whose names a refusal may give, a fixed expectation."""

    kind: str
    what: str
    names: tuple[str, ...]
    expect: str = "any"          # "refuse", "read", "read+warning" or "any" (the independent reader decides)
    check: Optional[Callable[[Path], None]] = None   # run after the case (e.g. no payload file)


def _flip_bytes(rng: np.random.Generator, path: Path, n: int, lo: int = 0) -> str:
    data = bytearray(path.read_bytes())
    places = rng.integers(lo, len(data), size=n)
    for at in places:
        data[at] ^= int(rng.integers(1, 256))
    write_new(path, bytes(data))
    return f"{n} byte(s) at {sorted(places.tolist())}"


def c_bin_byte_flip(rng, root):
    path = feature_dir(root) / "feature.bin"
    return Case("bin byte flip", _flip_bytes(rng, path, int(rng.integers(1, 5))), ("feature.bin",))


def c_bin_non_finite(rng, root):
    fd = feature_dir(root)
    data = np.fromfile(fd / "feature.bin", dtype="<f4")
    value = rng.choice([np.nan, np.inf, -np.inf])
    at = int(rng.integers(0, len(data)))
    data[at] = value
    write_new(fd / "feature.bin", data.tobytes())
    return Case("bin NaN/Inf", f"{value} at float {at}", ("feature.bin",), "refuse")


def c_bin_extreme(rng, root):
    fd = feature_dir(root)
    rows, dim = (int(v) for v in (fd / "shape.txt").read_text().split())
    data = np.fromfile(fd / "feature.bin", dtype="<f4").reshape(rows, dim)
    hit = rng.choice(rows, size=int(rng.integers(1, 4)), replace=False)
    value = rng.choice([F32_MAX, -F32_MAX, F32_MAX / 2, 1e30, -3e35])
    if rng.random() < 0.5:
        data[hit] = value
    else:
        data[hit, int(rng.integers(0, dim))] = value
    write_new(fd / "feature.bin", data.tobytes())
    return Case("bin extreme values", f"{value:g} in rows {sorted(hit.tolist())}", ("feature.bin",), "read+warning")


def c_bin_truncate(rng, root):
    path = feature_dir(root) / "feature.bin"
    size = path.stat().st_size
    keep = int(rng.choice([0, int(rng.integers(0, size)), size - 1, size - 4, size - 32]))
    write_new(path, path.read_bytes()[:keep])
    return Case("bin truncated", f"kept {keep} of {size} bytes", ("feature.bin",), "refuse")


def c_bin_extend(rng, root):
    path = feature_dir(root) / "feature.bin"
    extra = int(rng.choice([1, 3, 4, 32, int(rng.integers(1, 5000))]))
    write_new(path, path.read_bytes() + rng.bytes(extra))
    return Case("bin extended", f"{extra} bytes appended", ("feature.bin",), "refuse")


def c_shape_edit(rng, root):
    path = feature_dir(root) / "shape.txt"
    rows, dim = (int(v) for v in path.read_text().split())
    options = [f"{dim} {rows}", f"{rows + 1} {dim}", f"{rows - 1} {dim}", f"{rows} {dim + 1}", f"{rows * 2} {dim // 2}",
               f"{rows} {dim} 1", f"{rows}", "", f"-{rows} {dim}", f"{rows} 0", f"{rows}.0 {dim}", "rows dim",
               f"{rows} {dim}" + "9" * 40, f"{rows:x} {dim}", f"{rows} {dim}\x00", f"\n\n  {rows}\t{dim}  \n"]
    text = options[int(rng.integers(0, len(options)))]
    write_new(path, text.encode("latin-1"))
    same = text.split() == [str(rows), str(dim)]
    return Case("shape.txt edit", repr(text)[:60], ("shape.txt", "feature.bin", "id.txt"), "read" if same else "refuse")


def c_id_edit(rng, root):
    path = feature_dir(root) / "id.txt"
    ids = path.read_text(encoding="latin-1").split()
    i, j = (int(v) for v in rng.choice(len(ids), size=2, replace=False))
    how = ["drop", "duplicate", "rename", "swap", "insert", "flip", "blank"][int(rng.integers(0, 7))]
    if how == "drop":
        del ids[i]
    elif how == "duplicate":
        ids[i] = ids[j]
    elif how == "rename":
        ids[i] = ids[i] + "x"
    elif how == "swap":
        ids[i], ids[j] = ids[j], ids[i]
    elif how == "insert":
        ids.insert(i, "extra_frame")
    elif how == "blank":
        ids[i] = ids[i][:3] + " " + ids[i][3:]
    if how == "flip":
        write_new(path, path.read_bytes())
        what = _flip_bytes(rng, path, 1)
    else:
        write_new(path, " ".join(ids).encode("latin-1"))
        what = f"{how} id {i}"
    return Case("id.txt edit", what, ("id.txt", "shape.txt", "video2frames.txt"))


def _v2f_text(mapping: dict, style: str) -> str:
    if style == "json":
        return json.dumps(mapping, ensure_ascii=False)
    return "{" + ",\n ".join(f"{k!r}: {v!r}" for k, v in mapping.items()) + ",}"   # ast only (trailing comma)


def c_v2f_edit(rng, root):
    path = feature_dir(root) / "video2frames.txt"
    mapping = ast.literal_eval(path.read_text(encoding="latin-1"))
    videos = list(mapping)
    v = videos[int(rng.integers(0, len(videos)))]
    how = ["delete video", "drop frame", "rename frame", "reverse frames", "empty list", "add video", "string value",
           "int key", "flip", "truncate", "nested", "set value"][int(rng.integers(0, 12))]
    style = "json" if rng.random() < 0.5 else "ast"
    if how == "delete video":
        del mapping[v]
    elif how == "drop frame" and len(mapping[v]) > 1:
        del mapping[v][int(rng.integers(0, len(mapping[v])))]
    elif how == "rename frame":
        mapping[v][0] += "?"
    elif how == "reverse frames":
        mapping[v] = mapping[v][::-1]
    elif how == "empty list":
        mapping[v] = []
    elif how == "add video":
        mapping["unused_video"] = mapping[v][:2]
    elif how == "string value":
        mapping[v] = " ".join(mapping[v])
    elif how == "int key":
        mapping[7] = mapping.pop(v)
        style = "ast"
    text = _v2f_text(mapping, style)
    if how == "nested":
        text = "{" + f"{v!r}: " + "[" * 2000 + "]" * 2000 + "}"
    elif how == "set value":
        text = text.replace("[", "{", 1).replace("]", "}", 1)
    write_new(path, text.encode("latin-1"))
    if how == "flip":
        what = _flip_bytes(rng, path, int(rng.integers(1, 4)))
    elif how == "truncate":
        data = path.read_bytes()
        write_new(path, data[: int(rng.integers(0, len(data)))])
        what = "truncated"
    else:
        what = f"{how} ({v}, {style})"
    return Case("video2frames.txt edit", what, ("video2frames.txt", "id.txt", "caption.txt"))


def c_v2f_duplicate(rng, root):
    path = feature_dir(root) / "video2frames.txt"
    mapping = ast.literal_eval(path.read_text(encoding="latin-1"))
    videos = list(mapping)
    v, w = (videos[int(i)] for i in rng.choice(len(videos), size=2, replace=False))
    frames = mapping[w] if rng.random() < 0.7 else mapping[v]
    items = [f"{k!r}: {f!r}" for k, f in mapping.items()]
    items.insert(int(rng.integers(0, len(items) + 1)), f"{v!r}: {frames!r}")
    style = "json" if rng.random() < 0.5 else "ast"
    joiner = "\n" if rng.random() < 0.5 else " "
    text = "{" + ("," + joiner).join(items) + ("}" if style == "json" else ",}")
    if style == "json":
        text = text.replace("'", '"')
    write_new(path, text.encode("latin-1"))
    return Case("video2frames.txt duplicate key", f"{v} twice ({style})", ("video2frames.txt",), "refuse")


def c_v2f_code(rng, root):
    path = feature_dir(root) / "video2frames.txt"
    target = str(root / PAYLOAD)
    payloads = [f"__import__('pathlib').Path({target!r}).touch()",
                f"{{'train00': open({target!r}, 'w')}}",
                f"(lambda: __import__('os').system('touch {target}'))()",
                f"{{'a': [f'{{__import__(\"pathlib\").Path({target!r}).touch()}}']}}",
                f"{{**__import__('builtins').__dict__}} or open({target!r}, 'w')",
                f"[x for x in [open({target!r}, 'w')]]",
                f"{{'train00': ['a'] + [open({target!r}, 'w').name]}}",
                f"exec('open({target!r}, \"w\")')"]
    code = payloads[int(rng.integers(0, len(payloads)))]
    write_new(path, code.encode("latin-1"))

    def no_payload(case_root: Path) -> None:
        assert not (case_root / PAYLOAD).exists() and not Path(PAYLOAD).exists(), "code in video2frames.txt ran"
    return Case("code in video2frames.txt", code[:60], ("video2frames.txt",), "refuse", no_payload)


def c_caption_encoding(rng, root):
    split = SPLITS[int(rng.integers(0, 3))]
    path = caption_file(root, split)
    data = path.read_bytes()
    how = ["flip", "latin-1 text", "latin-1 id", "bom", "crlf", "utf-16", "nul text", "tabs"][int(rng.integers(0, 8))]
    lines = data.split(b"\n")
    i = int(rng.integers(0, len(lines) - 1))
    if how == "flip":
        write_new(path, data)
        return Case("caption file encoding", f"{split}: " + _flip_bytes(rng, path, int(rng.integers(1, 4))),
                    (path.name, "query_feat.hdf5", "video2frames.txt"))
    if how == "latin-1 text":
        lines[i] += " caf\xe9".encode("latin-1")
    elif how == "latin-1 id":
        lines[i] = lines[i].replace(b"#", "\xe9#".encode("latin-1"), 1)
    elif how == "bom":
        lines[0] = b"\xef\xbb\xbf" + lines[0]
    elif how == "crlf":
        lines = [line + b"\r" for line in lines]
    elif how == "utf-16":
        write_new(path, data.decode("utf-8").encode("utf-16"))
        return Case("caption file encoding", f"{split}: utf-16", (path.name,), "refuse")
    elif how == "nul text":
        lines[i] += b" a\x00b"
    elif how == "tabs":
        lines[i] = lines[i].replace(b" ", b"\t", 1)
    write_new(path, b"\n".join(lines))
    expect = "refuse" if how == "latin-1 id" else "read"
    return Case("caption file encoding", f"{split}: {how} line {i + 1}", (path.name,), expect)


def c_caption_id_edit(rng, root):
    split = SPLITS[int(rng.integers(0, 3))]
    path = caption_file(root, split)
    lines = path.read_text(encoding="utf-8").splitlines()
    i = int(rng.integers(0, len(lines)))
    cap, text = lines[i].split(" ", 1)
    how = ["nul", "control", "duplicate line", "duplicate id", "unknown id", "long id", "unknown video", "empty id",
           "other split's caption"][int(rng.integers(0, 9))]
    expect = "refuse"
    names: tuple[str, ...] = (path.name,)
    if how == "nul":
        lines[i] = f"{cap}\x00{int(rng.integers(0, 9))} {text}"
    elif how == "control":
        lines[i] = f"{cap[:2]}{chr(int(rng.choice([1, 7, 8, 27, 127, 0x80, 0x9f])))}{cap[2:]} {text}"
    elif how == "duplicate line":
        lines.insert(int(rng.integers(0, len(lines) + 1)), lines[i])
    elif how == "duplicate id":
        lines.append(f"{cap} another text")
    elif how == "unknown id":
        lines[i] = f"{cap}x {text}"
        names = (path.name, "query_feat.hdf5")
    elif how == "long id":
        lines[i] = f"{cap}{'y' * int(rng.choice([100, 10_000, 1_000_000]))} {text}"
        names = (path.name, "query_feat.hdf5")
    elif how == "unknown video":
        lines[i] = f"zz{cap} {text}"
        names = (path.name, "query_feat.hdf5", "video2frames.txt")
    elif how == "empty id":
        lines[i] = f"#enc#0 {text}"
        names = (path.name, "query_feat.hdf5", "video2frames.txt")
    elif how == "other split's caption":
        other = caption_file(root, SPLITS[(SPLITS.index(split) + 1) % 3]).read_text(encoding="utf-8").splitlines()
        lines.append(other[int(rng.integers(0, len(other)))])
        expect = "read"    # leakage: read (and reported by inspect/train), not refused
    write_new(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return Case("caption id edit", f"{split}: {how} line {i + 1}", names, expect)


def _h5_edit(rng, root, path: Path, keys_hint: str) -> Case:
    own(path)
    with h5py.File(path, "r") as f:
        keys = list(f)
    key = keys[int(rng.integers(0, len(keys)))]
    how = ["string", "wrong width", "nan", "missing", "zero rows", "one-d", "three-d", "group", "int", "bool",
           "compound", "extreme"][int(rng.integers(0, 12))]
    expect = "refuse"
    with h5py.File(path, "a") as f:
        rows = f[key][...]
        del f[key]
        if how == "string":
            f.create_dataset(key, data=np.array([[b"1.5"] * rows.shape[1]] * 2))
        elif how == "wrong width":
            f.create_dataset(key, data=np.zeros((len(rows), rows.shape[1] + int(rng.choice([-1, 1, 5]))), "f4"))
        elif how == "nan":
            rows[int(rng.integers(0, len(rows))), 0] = rng.choice([np.nan, np.inf])
            f.create_dataset(key, data=rows)
        elif how == "zero rows":
            f.create_dataset(key, data=np.zeros((0, rows.shape[1]), "f4"))
        elif how == "one-d":
            f.create_dataset(key, data=rows[0])
        elif how == "three-d":
            f.create_dataset(key, data=rows[None])
        elif how == "group":
            f.create_group(key)
        elif how == "int":
            f.create_dataset(key, data=np.round(rows * 10).astype(np.int16))
            expect = "read"
        elif how == "bool":
            f.create_dataset(key, data=rows > 0)
        elif how == "compound":
            f.create_dataset(key, data=np.zeros((2, rows.shape[1]), dtype=[("a", "f4"), ("b", "i4")]))
        elif how == "extreme":
            rows[int(rng.integers(0, len(rows)))] = F32_MAX
            f.create_dataset(key, data=rows)
            expect = "read+warning"
    return Case(f"{keys_hint} HDF5 dataset", f"{how} ({key})", (path.name,), expect)


def _h5_damage(rng, root, path: Path, kind: str) -> Case:
    data = bytearray(path.read_bytes())
    how = ["heap", "flip", "truncate", "zero length", "not hdf5", "superblock", "btree"][int(rng.integers(0, 7))]
    expect = "refuse"
    if how in ("heap", "btree"):
        sig = b"HEAP" if how == "heap" else b"TREE"
        at = data.find(sig)
        span = int(rng.integers(4, 40))
        data[at + 4:at + 4 + span] = rng.bytes(span)
        expect = "any"
    elif how == "flip":
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[at] ^= int(rng.integers(1, 256))
        expect = "any"
    elif how == "truncate":
        data = data[: int(rng.integers(0, len(data) - 1))]
        expect = "any"    # HDF5 may not need the last bytes
    elif how == "zero length":
        data = bytearray()
    elif how == "not hdf5":
        data = bytearray(b"cap_id,0.1,0.2\n")
    elif how == "superblock":
        data[int(rng.integers(0, 8))] ^= 0xFF
    write_new(path, bytes(data))
    return Case(f"{kind} HDF5 file damage", how, (path.name,), expect)


def c_text_h5_dataset(rng, root):
    return _h5_edit(rng, root, text_file(root), "text")


def c_text_h5_damage(rng, root):
    return _h5_damage(rng, root, text_file(root), "text")


def c_frames_h5(rng, root):
    """The per-video HDF5 variant: feature.bin removed, feature.hdf5 damaged."""
    path = feature_dir(root) / "feature.hdf5"
    return _h5_edit(rng, root, path, "frame") if rng.random() < 0.5 else _h5_damage(rng, root, path, "frame")


def c_words(rng, root):
    path = words_file(root)
    words = json.loads(path.read_text(encoding="utf-8"))
    how = ["invalid json", "list", "latin-1", "value not list", "empty", "deep"][int(rng.integers(0, 6))]
    text = {"invalid json": json.dumps(words)[:-1], "list": json.dumps(list(words)), "empty": "",
            "value not list": json.dumps({k: 5 for k in words}), "deep": "[" * 100_000 + "]" * 100_000,
            "latin-1": json.dumps(words)}[how].encode("utf-8")
    if how == "latin-1":
        text = text.replace(b"w0", "\xe90".encode("latin-1"))
    write_new(path, text)
    return Case("words.json edit", how, (path.name,), "refuse")


FILES = ["FeatureData/feat/feature.bin", "FeatureData/feat/id.txt", "FeatureData/feat/shape.txt",
         "FeatureData/feat/video2frames.txt", "TextData/roberta_tiny_query_feat.hdf5", "TextData/tinytrain.caption.txt",
         "TextData/tinyval.caption.txt", "TextData/tinytest.caption.txt", "TextData/tiny_words.json",
         "FeatureData/feat", "FeatureData", "TextData"]


def c_missing(rng, root):
    rel = FILES[int(rng.integers(0, len(FILES)))]
    target = root / NAME / rel
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    names = (Path(rel).name,) if rel != "FeatureData" else ("feat",)
    return Case("missing file", rel, names, "read" if rel.endswith("words.json") else "refuse")


CLASSES: list[tuple[Callable, str]] = [
    (c_bin_byte_flip, "bin"), (c_bin_non_finite, "bin"), (c_bin_extreme, "bin"), (c_bin_truncate, "bin"),
    (c_bin_extend, "bin"), (c_shape_edit, "bin"), (c_id_edit, "bin"), (c_v2f_edit, "bin"), (c_v2f_duplicate, "bin"),
    (c_v2f_code, "bin"), (c_caption_encoding, "bin"), (c_caption_id_edit, "bin"), (c_text_h5_dataset, "bin"),
    (c_text_h5_damage, "bin"), (c_frames_h5, "hdf5"), (c_words, "bin"), (c_missing, "bin")]


# ----------------------------------------------------------------------------- the campaign

def run_case(index: int, bases: dict[str, Path], work: Path) -> tuple[str, str, Optional[str]]:
    """(class, outcome, failure or None) of one seeded corruption; case ``index`` uses class index % #classes."""
    corrupt, variant = CLASSES[index % len(CLASSES)]
    rng = np.random.default_rng([SEED, index])
    root = work / f"case{index}"
    shutil.copytree(bases[variant], root, copy_function=os.link)
    case = corrupt(rng, root)
    label = f"case {index} [{case.kind}: {case.what}]"
    try:
        expected: Optional[Reading] = independent_reading(root)
        verdict = "read"
    except MustRefuse as why:
        expected, verdict = None, f"refuse ({why})"
    if case.expect == "refuse" and expected is not None:
        return case.kind, "bad case", f"{label}: the independent reader accepts a copy that must be refused"
    if case.expect.startswith("read") and expected is None:
        return case.kind, "bad case", f"{label}: the independent reader refuses a copy that must be read: {verdict}"
    here = os.getcwd()
    os.chdir(root)           # a payload with a relative path would land here
    try:
        got = ralbook_reading(root)
        error = None
    except RalbookError as err:
        got, error = None, str(err)
    except Exception:        # a traceback for the user
        return case.kind, "traceback", f"{label}: {traceback.format_exc(limit=-3)}"
    finally:
        os.chdir(here)
    try:
        if case.check:
            case.check(root)
    except AssertionError as err:
        return case.kind, "code ran", f"{label}: {err}"
    if error is not None:
        if expected is not None:
            return case.kind, "wrongly refused", f"{label}: refused a copy the independent reader reads: {error}"
        if "\n" in error or len(error) > 700:
            return case.kind, "bad message", f"{label}: message not one short line ({len(error)} chars)"
        if not any(name in error for name in case.names):
            return case.kind, "bad message", f"{label}: message names none of {case.names}: {error}"
        return case.kind, "refused", None
    if expected is None:
        return case.kind, "silently accepted", f"{label}: read a copy that must be refused ({verdict})"
    problem = compare(expected, got)
    if problem:
        return case.kind, "wrong read", f"{label}: {problem}"
    if case.expect == "read+warning" and not got.warnings:
        return case.kind, "no warning", f"{label}: extreme values read without a warning"
    return case.kind, "read", None


def unit(x: np.ndarray) -> np.ndarray:
    """Rows divided by (their L2 norm + 1e-5), in float64."""
    x = x.astype(np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


def model_inputs(raw: np.ndarray, n_clips: int = 32, max_frames: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Clip and frame inputs by the written-out formula, in float64: bins b_i = min(round(i n / k), n - 1),
    each the mean of rows b_i..b_(i+1)-1 (row b_i when empty), rows divided by (norm + 1e-5)."""
    def bins(x: np.ndarray, k: int) -> np.ndarray:
        n = len(x)
        b = [min(int(np.round(i * n / k)), n - 1) for i in range(k + 1)]
        return np.stack([x[b[i]:b[i + 1]].mean(0) if b[i] < b[i + 1] else x[b[i]] for i in range(k)])

    x = raw.astype(np.float64)
    return unit(bins(x, n_clips)), unit(bins(x, max_frames) if len(x) > max_frames else x)


def compare(expected: Reading, got: Reading) -> Optional[str]:
    if expected.captions != got.captions:
        return "captions differ"
    for video, raw in expected.frames.items():
        for name, want, have in zip(("clip", "frame"), model_inputs(raw), got.inputs[video]):
            if have.shape != want.shape or not np.allclose(have, want, rtol=1e-4, atol=1e-6):
                return f"{name} inputs of {video!r} differ from the formula (float64)"
    for cap, raw in expected.text.items():
        if not np.allclose(got.queries[cap], unit(raw[:30]), rtol=1e-4, atol=1e-6):
            return f"query input of {cap!r} differs from the formula (float64)"
    for what in ("frames", "text"):
        a, b = getattr(expected, what), getattr(got, what)
        if a.keys() != b.keys():
            return f"{what}: different ids"
        for key in a:
            if a[key].shape != b[key].shape or not np.array_equal(a[key], b[key]):
                return f"{what} of {key!r} differ from the bytes on disk"
    if expected.words != got.words:
        return "words differ"
    return None


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corruption_bases")
    out = {variant: build_base(root / variant, variant) for variant in ("bin", "hdf5")}
    for variant, base in out.items():   # the bases themselves read correctly
        assert independent_reading(base).frames and ralbook_reading(base).warnings == []
    return out


def test_corruption_campaign(bases, tmp_path):
    outcomes: Counter = Counter()
    failures = []
    for index in range(N_CASES):
        kind, outcome, failure = run_case(index, bases, tmp_path)
        outcomes[kind, outcome] += 1
        if failure:
            failures.append(failure)
        if index % 50 == 49:
            shutil.rmtree(tmp_path, ignore_errors=True)
            tmp_path.mkdir(exist_ok=True)
    table = "\n".join(f"{k:36s} {o:18s} {n}" for (k, o), n in sorted(outcomes.items()))
    print(f"\n{N_CASES} corruptions (seed {SEED}):\n{table}")
    assert not failures, f"{len(failures)} of {N_CASES} cases failed:\n" + "\n".join(failures[:20])
    assert N_CASES < len(CLASSES) or sum(n for (_, o), n in outcomes.items() if o == "refused") >= len(CLASSES)


def refused_copy(bases: dict[str, Path], root: Path, corrupt: Callable, seed: int = 1) -> Case:
    """A copy of the bin base with one corruption of ``corrupt``'s class that must be refused."""
    rng = np.random.default_rng(seed)
    while True:   # some classes also hold corruptions that must be read (leakage, BOM, ...)
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(bases["bin"], root, copy_function=os.link)
        case = corrupt(rng, root)
        if case.expect == "refuse":
            return case


INSPECT = ["inspect", "--collection", NAME, "--feature", FEATURE, "--no-progress", "--data-root"]


@pytest.mark.parametrize("corrupt", [c_bin_truncate, c_v2f_duplicate, c_caption_id_edit, c_text_h5_dataset,
                                     c_shape_edit])
def test_inspect_command_prints_one_line_and_exits_2(bases, tmp_path, capsys, corrupt):
    from ralbook.cli import main

    case = refused_copy(bases, tmp_path / "copy", corrupt)
    assert main(INSPECT + [str(tmp_path / "copy")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ralbook inspect: error: ")
    assert any(name in lines[0] for name in case.names)


def test_inspect_subprocess_on_code_in_video2frames(bases, tmp_path):
    root = tmp_path / "copy"
    case = refused_copy(bases, root, c_v2f_code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1])] + sys.path))
    done = subprocess.run([sys.executable, "-m", "ralbook"] + INSPECT + [str(root)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ralbook inspect: error: ") and "Traceback" not in done.stderr
    assert "video2frames.txt" in lines[0] and case.names == ("video2frames.txt",)
    assert not (root / PAYLOAD).exists() and not (tmp_path / PAYLOAD).exists()
