"""Same seed, same thread count: the same run, bit for bit, also across a kill and a resume (2 threads).

The kernel that varied was the backward pass of the positional tables: reading rows by repeated
positions (``weight[positions]``) adds gradient rows with parallel atomics on CPU, in an order that
changes from run to run; ``F.embedding`` adds them in a fixed order.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ralbook.data.demo import generate_demo
from ralbook.model import Packing, PositionalEncoding
from ralbook.training.rundir import BEST_FILE, LAST_FILE, METRICS_FILE
from ralbook.training.reproducibility import deterministic_kernels

THREADS = 2


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def test_positional_table_gradients_are_bitwise_equal_on_two_threads(two_threads):
    """Packed rows with repeated positions, large enough for torch's parallel CPU paths."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 129, (32, 1), generator=g)
    packing = Packing.from_mask((torch.arange(128)[None] < lengths).float())
    layer = PositionalEncoding(128, 64, dropout=0.0)
    x = torch.randn(len(packing.index), 64, generator=g)
    upstream = torch.randn(len(packing.index), 64, generator=g)
    assert len(packing.index) * 64 > 32768  # above torch's grain size: the parallel paths run
    digests = set()
    for _ in range(12):
        layer.zero_grad(set_to_none=True)
        layer(x, packing.positions).backward(upstream)
        digests.add(hashlib.sha256(layer.table.weight.grad.numpy().tobytes()).hexdigest())
    assert len(digests) == 1
    # the same values as the plain row lookup (up to the order of the additions)
    torch.testing.assert_close(layer(x, packing.positions),
                               layer.norm(x + layer.table.weight.detach()[packing.positions]))


def test_deterministic_setting_runs_on_cpu_and_restores_the_flag():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled()
        layer = PositionalEncoding(8, 4, dropout=0.0)
        layer(torch.randn(5, 4), torch.tensor([0, 1, 1, 7, 0])).sum().backward()
    assert torch.are_deterministic_algorithms_enabled() == before


# ----------------------------------------------------------------------------- whole runs in subprocesses


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_demo(root, n_train=32, n_val=8, n_test=8, visual_dim=24, text_dim=16, latent_dim=8)
    return root


def train_command(root: Path, out: Path, *extra: str) -> list[str]:
    sets = ["model.hidden_size=64", "model.n_heads=2", "train.hard_negative_start_epoch=1", "train.seed=7",
            "train.eval_video_chunk=16", "data.visual_dim=24", "data.text_dim=16"]
    return [sys.executable, "-m", "ralbook", "train", "--data-root", str(root), "--epochs", "2", "--batch-size", "16",
            "--out", str(out), "--no-progress", *[a for s in sets for a in ("--set", s)], *extra]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def weights_digest(path: Path) -> str:
    from ralbook.checkpoint import load_file

    model = load_file(path)["model"]
    return hashlib.sha256(b"".join(model[k].numpy().tobytes() for k in sorted(model))).hexdigest()


@pytest.mark.slow  # four short training processes on two threads (minutes on a busy two-core machine)
def test_two_thread_runs_are_bitwise_equal_and_survive_a_kill(data_root, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        subprocess.run(train_command(data_root, run), env=environment(), check=True, capture_output=True,
                       timeout=600)
    assert records(runs[0]) == records(runs[1])
    assert weights_digest(runs[0] / BEST_FILE) == weights_digest(runs[1] / BEST_FILE)
    # killed with SIGKILL right after its first checkpoint (after step 1 of 2), then resumed
    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(data_root, killed, "--checkpoint-every", "1"), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (killed / LAST_FILE).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / METRICS_FILE).exists() or len(records(killed)) < 2
    subprocess.run(train_command(data_root, killed, "--resume"), env=environment(), check=True, capture_output=True,
                   timeout=600)
    assert records(killed) == records(runs[0])
    assert weights_digest(killed / BEST_FILE) == weights_digest(runs[0] / BEST_FILE)
    assert json.loads((killed / "test_metrics.json").read_text()) == json.loads((runs[0] / "test_metrics.json")
                                                                                  .read_text())
