"""train.amp=auto: bf16 where it is measured clearly faster (CPUs) or native (Ampere+ GPUs); decided once per run."""
from __future__ import annotations

import json

import pytest
import torch

from ralbook.runtime import precision
from ralbook.config import TrainConfig, preset
from ralbook.errors import ConfigError, RalbookError
from ralbook.runtime.precision import autocast, cpu_bf16_flags, describe_amp, native_bf16, resolve_amp
from ralbook.training.rundir import read_metrics
from ralbook.training.trainer import train
from test_train import Kill, easy_demo, kill_at, tiny_cfg, without_time

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def detect(monkeypatch):
    """Detection from the (patched) machine, not from the suite's RALBOOK_NATIVE_BF16=0."""
    monkeypatch.delenv(precision.OVERRIDE_VARIABLE, raising=False)
    return monkeypatch


def test_auto_is_the_default_and_is_checked_when_set(tmp_path):
    assert TrainConfig().amp == "auto"
    assert all(preset(name).train.amp == "auto" for name in ("tvr", "act", "cha", "clip"))
    assert preset("demo").train.amp == "none"  # its small model is slower in bf16 (README)
    cfg = tiny_cfg(tmp_path)
    assert cfg.override("train.amp=auto").train.amp == "auto"
    with pytest.raises(ConfigError, match="auto, none, bf16, fp16"):
        cfg.override("train.amp=fp8")
    with pytest.raises(RalbookError, match="unknown amp mode"):
        resolve_amp("fp8", CPU)


def test_cpu_flags_name_the_bf16_instructions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_bf16_flags(info) == {"amx_bf16", "avx512_bf16"}
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_bf16_flags(info) == {"avx512_bf16"}
    assert cpu_bf16_flags(tmp_path / "missing") is None


def fake_probe(ratio):
    return lambda hidden: {"ratio": ratio, "cached": True}


@pytest.mark.parametrize("ratio,expected", [(2.3, "bf16"), (1.5, "bf16"), (1.49, "none"), (0.7, "none")])
def test_auto_on_a_cpu_follows_the_measured_ratio(detect, ratio, expected):
    detect.setattr(precision, "_host_lacks_bf16", lambda: False)
    detect.setattr(precision, "cpu_probe", fake_probe(ratio))
    assert native_bf16(CPU)[0] is (expected == "bf16")
    assert resolve_amp("auto", CPU) == expected
    for explicit in ("none", "bf16"):
        assert resolve_amp(explicit, CPU) == explicit  # an explicit choice is never revised
    with autocast(CPU, "auto"):
        dtype = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    assert dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)
    line = describe_amp("auto", CPU)
    assert line.startswith("precision: " + ("bf16 autocast" if expected == "bf16" else "fp32"))
    assert f"{ratio:.2f}x as fast" in line and "1.5x" in line


def test_a_cpu_without_bf16_instructions_is_fp32_without_measuring(detect):
    def never(hidden):
        raise AssertionError("measured")

    detect.setattr(precision, "_host_lacks_bf16", lambda: True)
    detect.setattr(precision, "cpu_probe", never)
    assert resolve_amp("auto", CPU) == "none" and "emulated" in native_bf16(CPU)[1]


def test_the_probe_is_measured_once_per_machine_and_cached_on_disk(tmp_path, monkeypatch):
    from ralbook.runtime import amp_probe

    calls = []

    def measure(hidden):
        calls.append(hidden)
        return {"ratio": 1.2 + hidden / 1000, "rule": amp_probe.BF16_RULE}

    first = amp_probe.probe(64, tmp_path, measure)
    again = amp_probe.probe(64, tmp_path, measure)
    other = amp_probe.probe(384, tmp_path, measure)
    assert calls == [64, 384] and not first["cached"] and again["cached"] and not other["cached"]
    assert again["ratio"] == first["ratio"] == pytest.approx(1.264) and other["ratio"] == pytest.approx(1.584)
    saved = json.loads((tmp_path / amp_probe.CACHE_FILE).read_text())
    assert len(saved) == 2 and all(amp_probe.machine_key() in key for key in saved)
    (tmp_path / amp_probe.CACHE_FILE).write_text("{not json")           # damaged: measured again
    assert not amp_probe.probe(64, tmp_path, measure)["cached"] and calls == [64, 384, 64]
    # where: RALBOOK_CACHE_DIR, else XDG_CACHE_HOME/ralbook, else ~/.cache/ralbook
    assert amp_probe.cache_dir({"RALBOOK_CACHE_DIR": "/a", "XDG_CACHE_HOME": "/b"}).as_posix() == "/a"
    assert amp_probe.cache_dir({"XDG_CACHE_HOME": "/b"}).as_posix() == "/b/ralbook"
    assert amp_probe.cache_dir({}).parts[-2:] == (".cache", "ralbook")


def test_the_real_measurement_times_both_products_quickly():
    from ralbook.runtime.amp_probe import measure_bf16_ratio

    result = measure_bf16_ratio(hidden=32, rows=256, repeats=2)
    assert result["ratio"] == pytest.approx(result["fp32_s"] / result["bf16_s"], rel=0.01)
    assert result["shape"] == [256, 32, 128] and result["fp32_s"] > 0 and result["bf16_s"] > 0


@pytest.mark.parametrize("capability,expected", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "none")])
def test_auto_on_a_gpu_follows_its_compute_capability(detect, capability, expected):
    detect.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    detect.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    assert resolve_amp("auto", torch.device("cuda")) == expected
    assert f"compute capability {capability[0]}.{capability[1]}" in native_bf16(torch.device("cuda"))[1]


def test_the_variable_overrides_the_detection(detect):
    detect.setattr(precision, "cpu_probe", fake_probe(0.5))
    detect.setenv(precision.OVERRIDE_VARIABLE, "1")
    assert resolve_amp("auto", CPU) == "bf16"
    detect.setenv(precision.OVERRIDE_VARIABLE, "0")
    assert resolve_amp("auto", torch.device("cuda")) == "none"  # no GPU query at all


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return easy_demo(tmp_path_factory.mktemp("data"), 8, 3, 3)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_run_records_what_auto_chose_and_a_resume_keeps_it(data_root, tmp_path, monkeypatch, capsys, threads):
    """A run started where bf16 is native trains in bf16 (config.json says so); killed after its first epoch
    and resumed where auto means fp32, it trains its second epoch in bf16 too: its numbers equal those of
    an uninterrupted bf16 run. A new run there is fp32."""
    cfg = tiny_cfg(data_root, n_epoch=2, amp="auto")
    monkeypatch.setenv(precision.OVERRIDE_VARIABLE, "1")
    whole = tmp_path / "whole"
    train(cfg, whole, progress=True, threads=threads)
    assert "precision: bf16 autocast (train.amp=auto: RALBOOK_NATIVE_BF16=1" in capsys.readouterr().out
    assert json.loads((whole / "config.json").read_text())["train"]["amp"] == "bf16"
    run = tmp_path / "killed"
    with pytest.raises(Kill):
        train(cfg, run, progress=False, threads=threads, callbacks=[kill_at("epoch", epoch=0)])
    monkeypatch.setenv(precision.OVERRIDE_VARIABLE, "0")
    with pytest.raises(RalbookError, match="n_epoch"):  # the check still sees real differences
        train(tiny_cfg(data_root, n_epoch=3, amp="auto"), run, resume=True, progress=False, threads=threads)
    train(cfg, run, resume=True, progress=True, threads=threads)
    assert "bf16 autocast (train.amp=bf16), kept from the run being resumed" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train"]["amp"] == "bf16"
    assert without_time(read_metrics(run)) == without_time(read_metrics(whole))
    fp32 = tmp_path / "fp32"
    train(cfg, fp32, progress=False, threads=threads)
    assert json.loads((fp32 / "config.json").read_text())["train"]["amp"] == "none"
    assert read_metrics(whole)[0]["loss"]["total"] != read_metrics(fp32)[0]["loss"]["total"]  # bf16 really ran
