"""Checkpoint files: the authors' format without their code, strict loading, safety, atomic writes."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from ralbook.checkpoint import Replaced, load_file, load_reference, replaced_classes
from ralbook.files import save_atomic
from ralbook.config import ModelConfig
from ralbook.errors import CheckpointError
from ralbook.model import build_model

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture_a():
    fx = torch.load(FIXTURES / "fixture_A.pt")
    c = fx["config"]
    cfg = ModelConfig(visual_dim=c["visual_input_size"], text_dim=c["query_input_size"], hidden_size=c["hidden_size"],
                      n_heads=c["n_heads"], sft_factor=c["sft_factor"])
    return fx, cfg


def _authors_style_checkpoint(tmp_path: Path, state_dict: dict, prefix: str = "") -> Path:
    """Write a checkpoint whose pickle refers to classes of a module that is then made unimportable."""
    mod = types.ModuleType("Opts.optimization")
    pkg = types.ModuleType("Opts")

    class WarmupLinearSchedule:  # stands in for the authors' schedule object
        def __init__(self, warmup):
            self.warmup = warmup

    class EasyDict(dict):
        pass

    WarmupLinearSchedule.__module__ = EasyDict.__module__ = "Opts.optimization"
    WarmupLinearSchedule.__qualname__, EasyDict.__qualname__ = "WarmupLinearSchedule", "EasyDict"
    mod.WarmupLinearSchedule, mod.EasyDict = WarmupLinearSchedule, EasyDict
    sys.modules["Opts"], sys.modules["Opts.optimization"] = pkg, mod
    try:
        cfg = EasyDict(hidden_size=64, lr=3e-4)
        ckpt = {
            "state_dict": {prefix + k: v for k, v in state_dict.items()},
            "config": cfg,
            "epoch": 42,
            "model_val": 198.8,
            "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "schedule": WarmupLinearSchedule(0.01)}]},
        }
        path = tmp_path / "authors.ckpt"
        torch.save(ckpt, path)
    finally:
        del sys.modules["Opts"], sys.modules["Opts.optimization"]
    return path


@pytest.mark.parametrize("prefix", ["", "module."])
def test_loads_authors_file_without_their_code(tmp_path, prefix):
    fx, cfg = _fixture_a()
    path = _authors_style_checkpoint(tmp_path, fx["state_dict"], prefix)
    with pytest.raises(Exception):  # their classes are really not importable here
        torch.load(path, weights_only=False)
    raw = load_file(path)
    assert raw["epoch"] == 42 and raw["model_val"] == pytest.approx(198.8)
    assert isinstance(raw["optimizer"]["param_groups"][0]["schedule"], Replaced)
    assert raw["config"]["hidden_size"] == 64  # dict subclasses keep their items
    assert "Opts.optimization.WarmupLinearSchedule" in replaced_classes()
    model = load_reference(build_model(cfg).eval(), path)
    i, o = fx["inputs"], fx["outputs"]
    with torch.no_grad():
        v = model.encode_videos(i["clip_video_features"], i["frame_video_features"], i["videos_mask"])
        clip, frame = model.score(i["text_feat"], i["text_mask"], v)
    torch.testing.assert_close(clip, o["clip_scale_scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(frame, o["frame_scale_scores"], atol=1e-5, rtol=0)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    obj = load_file(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    assert isinstance(obj["payload"], Replaced)


def test_strict_loading_names_problems_with_shapes():
    fx, cfg = _fixture_a()
    state = dict(fx["state_dict"])
    state["query_input_proj.net.1.weight"] = torch.zeros(64, 50)
    del state["text_weight_fc.2.bias"]
    state["something_else.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        load_reference(build_model(cfg), state)
    msg = str(err.value)
    assert "query_proj.linear.weight: checkpoint (64, 50) vs model (64, 48)" in msg
    assert "word_confidence_mlp.2.bias" in msg
    assert "something_else.weight" in msg


def test_wrong_preset_is_reported():
    fx, _ = _fixture_a()
    other = ModelConfig(visual_dim=96, text_dim=48, hidden_size=32, n_heads=4)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_reference(build_model(other), fx["state_dict"])


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_broken_files_give_a_clear_error(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    save_atomic({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_file(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_file(tmp_path / "nope.pt")


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_atomic({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"step": 2, "bad": Unpicklable()}, path)
    assert load_file(path) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left behind


def test_plain_training_state_round_trips(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "rng": {"torch": torch.get_rng_state(), "python": [3, [1, 2], None]},
             "epoch": 2, "best": 1.5, "names": ("a", "b")}
    save_atomic(state, tmp_path / "s.pt")
    back = load_file(tmp_path / "s.pt")
    assert back["epoch"] == 2 and back["names"] == ("a", "b") and back["rng"]["python"] == [3, [1, 2], None]
    torch.testing.assert_close(back["rng"]["torch"], state["rng"]["torch"])
