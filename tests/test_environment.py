"""The machine record of a run (ralbook.runtime.environment) and the DataLoader worker count (ralbook.workers)."""
from __future__ import annotations

import json
import platform
import warnings

import pytest
import torch

from ralbook import __version__
from ralbook.runtime.environment import RELEVANT_FLAGS, cpu_flags, cpu_model, environment_lines
from ralbook.runtime.workers import MAX_AUTO, choose_workers, workers_for
from test_train import easy_demo, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_model_and_flags_come_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse2 avx2 fma avx512f "
                    "avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9B14\n")
    assert cpu_model(info) == "AMD EPYC 9B14"
    assert cpu_flags(info) == ["avx2", "avx512f", "avx512_bf16"]            # in RELEVANT_FLAGS order
    info.write_text("model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_flags(info) == list(RELEVANT_FLAGS)
    assert cpu_flags(tmp_path / "missing") == [] and cpu_model(tmp_path / "missing")   # never empty


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from ralbook.training.trainer import train

    root = easy_demo(tmp_path_factory.mktemp("data"), 8, 3, 3)
    run = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_cfg(root, n_epoch=1, batch_size=4), run, progress=False, threads=1)  # whatever the suite's setting
    return run


def test_a_trained_run_records_its_machine_and_resumes_past_it(trained_run):
    from ralbook.training.rundir import read_run_config
    from ralbook.training.trainer import train

    saved = json.loads((trained_run / "config.json").read_text())
    env = saved["environment"]
    assert env["cpu_model"] == cpu_model() and env["cpu_flags"] == cpu_flags()
    assert env["threads"] == 1                            # threads=1 above: what torch really used
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["ralbook"] == __version__ and env["precision"] == "fp32" and env["device"] == "cpu"
    assert env["num_workers"] == 0                        # the demo preset asks for none
    assert "amp_probe" not in env                         # demo preset: train.amp=none, nothing measured
    # not a setting: reading the configuration ignores it, and resuming a finished run works
    assert "environment" not in read_run_config(trained_run).to_dict()
    cfg = read_run_config(trained_run)
    train(cfg, trained_run, resume=True, progress=False)
    assert json.loads((trained_run / "config.json").read_text())["environment"]["threads"] == 1


def test_results_and_results_md_carry_the_machine(trained_run, tmp_path):
    from ralbook.workbook.results import collect_results, results_markdown

    config = json.loads((trained_run / "config.json").read_text())
    results = collect_results(tmp_path, config)
    assert results["environment"] == config["environment"]
    md = results_markdown(results)
    assert "## Machine" in md and f"| CPU | {cpu_model()} (flags: " in md and "| threads used | 1 |" in md
    assert "| precision | fp32 |" in md and f"{torch.__version__} / {platform.python_version()}" in md
    assert "Not recorded" in results_markdown({"notebooks": {}})


def test_environment_lines_name_the_bf16_measurement():
    env = {"cpu_model": "X", "cpu_flags": [], "threads": 2, "torch": "t", "python": "p", "ralbook": "r",
           "precision": "bf16 autocast", "num_workers": 1, "amp_probe": {"ratio": 2.28}}
    text = "\n".join(environment_lines(env))
    assert "none of avx2, avx512f, avx512_bf16, amx_bf16" in text and "| 2.28x |" in text
    assert "| DataLoader workers | 1 |" in text


@pytest.mark.parametrize("requested,cores,threads,busy,expected", [
    (3, 2, 2, None, 3),        # an explicit count is used as given
    (0, 64, 1, None, 0),
    (-1, 2, 2, None, 0),       # 2 cores, both used by the model's threads: no worker (no torch warning)
    (-1, 2, 1, None, 1),
    (-1, 2, 1, 1.0, 0),        # the free core is busy with other work
    (-1, 16, 8, None, MAX_AUTO),
    (-1, 16, 12, 2.4, 2),      # 2.4 busy cores count as 2
])
def test_worker_count_from_the_machine(requested, cores, threads, busy, expected):
    assert choose_workers(requested, cores, threads, busy) == expected


def test_auto_workers_never_exceed_the_cores_torch_suggests_and_a_run_records_them(tmp_path):
    import os

    from ralbook.training.trainer import train

    n = workers_for(-1)
    assert 0 <= n <= max(0, len(os.sched_getaffinity(0)) - torch.get_num_threads())
    root = easy_demo(tmp_path / "data", 8, 3, 3)
    cfg = tiny_cfg(root, n_epoch=1, batch_size=4).override("data.num_workers=-1")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*worker processes.*")   # torch's oversubscription warning
        train(cfg, tmp_path / "run", progress=False)
    env = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    assert env["num_workers"] == n
