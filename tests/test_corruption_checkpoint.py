"""Seeded corruption suite for checkpoints: every damaged best.pt / last.pt is refused by ``evaluate``
and ``train --resume`` with one RalbookError line that names the file, or gives the correct result.

"Correct" per entry point: ``evaluate`` reports exactly the metrics of the intact best.pt;
``train --resume`` ends with exactly the epoch records and test metrics of the intact run.

Classes: byte flips inside tensor data, byte flips anywhere, truncation, appended bytes (seeded);
content edits re-saved with a valid content hash (so that the structural checks, not the hash, must
catch them) and a few without; NaN/inf weights and optimizer state; malformed random-number states.
Default: about 70 cases in a few seconds of work each side; RALBOOK_CORRUPTION_CASES=N raises the
number of seeded byte-level cases to about N in all.
"""
from __future__ import annotations

import copy
import io
import json
import os
import random
import shutil
import struct
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from ralbook import cli
from ralbook.checkpoint import HASH_KEY, load_file, with_content_hash
from ralbook.config import preset
from ralbook.data.demo import generate_demo
from ralbook.training.rundir import BEST_FILE, LAST_FILE, METRICS_FILE, TEST_FILE
from ralbook.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
SEED = 9
DIMS = {"visual_dim": 12, "text_dim": 8}
BYTE_CASES = int(os.environ.get("RALBOOK_CORRUPTION_CASES", "0")) or 24  # seeded byte-level cases (both files)


class Kill(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """A run killed after its first step (last.pt mid-epoch), and the same run resumed to the end."""
    root = tmp_path_factory.mktemp("data")
    generate_demo(root, n_train=16, n_val=4, n_test=6, latent_dim=4, **DIMS)
    cfg = preset("demo", data={"data_root": str(root), **DIMS}, model={"hidden_size": 16, "n_heads": 2},
                 train={"n_epoch": 1, "batch_size": 8, "eval_video_chunk": 8})
    base = tmp_path_factory.mktemp("runs")
    killed = base / "killed"

    def kill(event, info):
        if event == "step" and info["global_step"] == 1:
            raise Kill

    with pytest.raises(Kill):
        train(cfg, killed, progress=False, callbacks=[kill], checkpoint_every=1)
    finished = base / "finished"
    shutil.copytree(killed, finished)
    train(cfg, finished, resume=True, progress=False)
    reference_eval = base / "reference_eval.json"
    assert run_evaluate(finished / BEST_FILE, root, reference_eval) == (0, "")
    return {"root": root, "killed": killed, "finished": finished, "work": base,
            "eval": json.loads(reference_eval.read_text())["metrics"],
            "records": records(finished), "test": json.loads((finished / TEST_FILE).read_text())}


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of the command line, in process; an uncaught exception propagates."""
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue().strip()


def run_evaluate(checkpoint: Path, root: Path, out_json: Path) -> tuple[int, str]:
    return run_cli(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(root), "--json", str(out_json),
                    "--no-progress"])


# ----------------------------------------------------------------------------- corruptions

def entries(data: bytes) -> dict[str, tuple[int, int]]:
    """zip member -> (start, end) byte range of its stored data (torch stores members uncompressed)."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            out[info.filename] = (start, start + info.compress_size)
    return out


def flip_bytes(data: bytes, rng: random.Random, span: tuple[int, int], n: int) -> bytes:
    out = bytearray(data)
    for _ in range(n):
        i = rng.randrange(*span)
        out[i] ^= rng.randrange(1, 256)
    return bytes(out)


def byte_cases(data: bytes, rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """Seeded byte-level damage: flips in tensor data, flips anywhere, truncation, appended bytes."""
    tensors = [span for name, span in entries(data).items() if "/data/" in name and span[1] > span[0]]
    cases = []
    for i in range(count):
        kind = ("tensor-flip", "tensor-flip", "any-flip", "truncate", "extend")[i % 5]
        if kind == "tensor-flip":
            cases.append((kind, flip_bytes(data, rng, rng.choice(tensors), rng.randint(1, 3))))
        elif kind == "any-flip":
            cases.append((kind, flip_bytes(data, rng, (0, len(data)), rng.randint(1, 4))))
        elif kind == "truncate":
            cases.append((kind, data[: rng.randrange(0, len(data))]))
        else:
            cases.append((kind, data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))))
    return cases


def first_float(model: dict) -> str:
    return next(k for k, v in model.items() if v.is_floating_point() and v.numel() > 1)


def _set(path: list, value: Any) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _drop(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _poison(section: str, value: float) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        if section == "model":
            d["model"][first_float(d["model"])].view(-1)[3] = value
        else:  # the first moment of the optimizer's first parameter state
            state = next(iter(d["optimizer"]["state"].values()))
            next(v for v in state.values() if torch.is_tensor(v) and v.numel() > 1).view(-1)[0] = value
    return edit


def _resize_first(d: dict) -> None:
    name = first_float(d["model"])
    d["model"][name] = d["model"][name][:-1].clone()


COMMON_EDITS: dict[str, Callable[[dict], None]] = {
    "no config": _drop("config"), "no model": _drop("model"),
    "config not a dict": _set(["config"], "tvr"), "config a list": _set(["config"], [1, 2]),
    "unknown config key": _set(["config", "train", "lrr"], 1.0),
    "unknown config section": _set(["config", "optim"], {}),
    "string for a number": _set(["config", "train", "lr"], "0.001"),
    "float for an int": _set(["config", "model", "hidden_size"], 16.5),
    "list for a dict": _set(["config", "model"], [16, 2]),
    "heads do not divide": _set(["config", "model", "n_heads"], 3),
    "model a list": _set(["model"], [1, 2]), "model holds a string": lambda d: d["model"].update(x="y"),
    "model tensor resized": _resize_first, "model extra tensor": lambda d: d["model"].update(extra=torch.ones(2)),
    "NaN weight": _poison("model", float("nan")), "inf weight": _poison("model", float("inf")),
    "version 99": _set(["version"], 99), "version a string": _set(["version"], "2"),
    "other format": _set(["format"], "ralbook-other"), "not a dict": lambda d: None,  # replaced below
}
BEST_EDITS: dict[str, Callable[[dict], None]] = {
    "epoch a string": _set(["epoch"], "0"), "val_metrics a list": _set(["val_metrics"], []),
}
LAST_EDITS: dict[str, Callable[[dict], None]] = {
    "state a list": _set(["state"], [0, 0]), "state epoch a string": _set(["state", "epoch"], "1"),
    "state unknown key": _set(["state", "epok"], 1), "state bool for an int": _set(["state", "global_step"], True),
    "optimizer a list": _set(["optimizer"], []),
    "optimizer without groups": lambda d: d["optimizer"].pop("param_groups"),
    "NaN optimizer state": _poison("optimizer", float("nan")),
    "rng a list": _set(["rng"], []), "rng without numpy": lambda d: d["rng"].pop("numpy"),
    "python rng short": lambda d: d["rng"]["python"].__setitem__(1, d["rng"]["python"][1][:10]),
    "python rng 2 parts": lambda d: d["rng"].__setitem__("python", d["rng"]["python"][:2]),
    "numpy rng short": lambda d: d["rng"]["numpy"].__setitem__(1, d["rng"]["numpy"][1][:5]),
    "numpy rng empty": _set(["rng", "numpy"], []),
    "torch rng wrong size": _set(["rng", "torch"], torch.zeros(7, dtype=torch.uint8)),
    "torch rng a float tensor": _set(["rng", "torch"], torch.zeros(5056)),
    "part_names a string": _set(["part_names"], "total"), "sums a string": _set(["sums"], "x"),
    "train_videos a string": _set(["train_videos"], "16"),
}


def content_cases(obj: dict, edits: dict[str, Callable[[dict], None]]) -> list[tuple[str, bytes]]:
    """Each edit saved with a recomputed (valid) content hash; the first three also with the stale hash."""
    cases = []
    for i, (name, edit) in enumerate(edits.items()):
        d = copy.deepcopy(obj)
        if name == "not a dict":
            d = [d["model"]]
        else:
            edit(d)
        variants = [("rehashed", with_content_hash({k: v for k, v in d.items() if k != HASH_KEY})
                     if isinstance(d, dict) else d)]
        if i < 3 and isinstance(d, dict):
            variants.append(("stale hash", d))
        for how, value in variants:
            buffer = io.BytesIO()
            torch.save(value, buffer)
            cases.append((f"{name} ({how})", buffer.getvalue()))
    no_hash = copy.deepcopy(obj)
    no_hash.pop(HASH_KEY)
    legacy = dict(no_hash, version=1)  # a version-1 file has no hash: read as it is (correct result)
    for name, value in (("hash removed", no_hash), ("legacy version 1", legacy),
                        ("hash wrong", dict(obj, **{HASH_KEY: "0" * 64}))):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        cases.append((name, buffer.getvalue()))
    return cases


def all_cases(runs: dict) -> list[tuple[str, str, bytes]]:
    rng = random.Random(SEED)
    out = []
    for which, path, edits in (("best", runs["finished"] / BEST_FILE, {**COMMON_EDITS, **BEST_EDITS}),
                               ("last", runs["killed"] / LAST_FILE, {**COMMON_EDITS, **LAST_EDITS})):
        data = path.read_bytes()
        cases = content_cases(load_file(path), edits) + byte_cases(data, rng, BYTE_CASES // 2)
        out += [(which, name, blob) for name, blob in cases]
    return out


# ----------------------------------------------------------------------------- the suite


def outcome(runs: dict, which: str, blob: bytes, where: Path) -> str:
    """'refused' (one line naming the file), 'correct', or a description of what went wrong."""
    if which == "best":
        checkpoint = where / BEST_FILE
        where.mkdir(parents=True)
        checkpoint.write_bytes(blob)
        code, err = run_evaluate(checkpoint, runs["root"], where / "eval.json")
        if code == 0:
            same = json.loads((where / "eval.json").read_text())["metrics"] == runs["eval"]
            return "correct" if same else "WRONG METRICS"
    else:
        shutil.copytree(runs["killed"], where)
        checkpoint = where / LAST_FILE
        checkpoint.write_bytes(blob)
        code, err = run_cli(["train", "--resume", "--out", str(where), "--data-root", str(runs["root"]),
                             "--no-progress"])
        if code == 0:
            same = records(where) == runs["records"] and json.loads((where / TEST_FILE).read_text()) == runs["test"]
            return "correct" if same else "WRONG METRICS"
    if code != 2:
        return f"exit {code}"
    if len(err.splitlines()) != 1 or str(checkpoint) not in err:
        return f"message does not name the file: {err[:300]}"
    return "refused"


def test_corrupted_checkpoints_are_refused_or_give_the_correct_result(runs, tmp_path):
    cases = all_cases(runs)
    assert len(cases) >= 50
    results: dict[str, str] = {}
    for i, (which, name, blob) in enumerate(cases):
        results[f"{which}: {name} #{i}"] = outcome(runs, which, blob, tmp_path / f"case{i}")
    bad = {k: v for k, v in results.items() if v not in ("refused", "correct")}
    counts = Counter(results.values())
    by_class = Counter((key.split(" #")[0].split(" (")[0], value) for key, value in results.items())
    correct = Counter(k for k, v in by_class.elements() if v == "correct")
    print(f"\n{len(cases)} corrupted checkpoints: {dict(counts)}; read correctly: {dict(correct)}")
    assert not bad, bad
    # intact content is read as it is; damaged tensor data and every content edit are refused
    assert [v for k, v in results.items() if "legacy version 1" in k] == ["correct", "correct"]
    assert all(v == "refused" for k, v in results.items() if "tensor-flip" in k or "(rehashed)" in k)
    assert by_class[("best: tensor-flip", "refused")] >= 4 and by_class[("last: tensor-flip", "refused")] >= 4
