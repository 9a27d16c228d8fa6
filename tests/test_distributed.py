"""Data-parallel training on torch.distributed: 2 gloo processes on the CPU against one process.

The equivalence tests turn dropout off: with dropout each rank draws its own masks (see
ralbook.distributed), so only the dropout-free run is the single-process run up to rounding.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ralbook.runtime.process_group import World, check_batches, describe, share
from ralbook.errors import RalbookError
from ralbook.training.rundir import CONFIG_FILE, read_metrics
from ralbook.training.trainer import Trainer, train
from ralbook.training.reproducibility import epoch_batches
from test_train import easy_demo, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for one rank on one machine."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}


def no_dropout(cfg):
    return cfg.override("model.drop=0").override("model.input_drop=0")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return easy_demo(tmp_path_factory.mktemp("data"), 30, 8, 11)


def step_cfg(root: Path):
    return no_dropout(tiny_cfg(root, batch_size=7, n_epoch=2))


# ----------------------------------------------------------------------------- pieces


def test_shares_cover_each_batch_once_in_order():
    for n in range(1, 12):
        for size in (1, 2, 3, 4):
            parts = [list(range(n))[share(n, World(r, size))] for r in range(size)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_batch_smaller_than_the_world_is_refused():
    check_batches(30, 7, World(0, 2))  # last batch: 2 videos
    with pytest.raises(RalbookError, match="last batch holds >= 3"):
        check_batches(29, 7, World(0, 3))  # last batch: 1 video
    assert describe(World(0, 2, 0, "gloo"), 7) == \
        "distributed: 2 ranks, backend gloo, 3-4 of the 7 videos of each global batch per rank"


# ----------------------------------------------------------------------------- one step


def _steps(trainer: Trainer, world: World) -> list[dict]:
    """Two steps on the first two global batches (hard negatives on, then off): loss and gradients."""
    from ralbook.data.datasets import TrainDataset, collate_train

    dataset = TrainDataset(trainer.collection, trainer.splits.train_videos)
    out = []
    for ids, hard in zip(epoch_batches(len(dataset), trainer.cfg.train.batch_size, 9527, 0)[:2], (True, False)):
        mine = ids[share(len(ids), world)]
        total = trainer.train_step(collate_train([dataset[i] for i in mine]), hard)
        out.append({"loss": total.item(), "grads": {n: None if p.grad is None else p.grad.clone()
                                                   for n, p in trainer.model.named_parameters()}})
    return out


def _step_worker(rank: int, port: int, root: str, out_dir: str) -> None:
    from ralbook.runtime import process_group as distributed

    os.environ.update(rank_env(rank, WORLD, port))
    torch.set_num_threads(1)
    world = distributed.init_from_env(torch.device("cpu"), timeout_s=120)
    try:
        trainer = Trainer(step_cfg(Path(root)), Path(out_dir) / "run", progress=False)
        torch.save(_steps(trainer, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def test_two_ranks_give_the_single_process_loss_and_gradients(root, tmp_path):
    mp.spawn(_step_worker, args=(free_port(), str(root), str(tmp_path)), nprocs=WORLD)
    single = _steps(Trainer(step_cfg(root), tmp_path / "single", progress=False), World())
    for rank in range(WORLD):
        ranked = torch.load(tmp_path / f"rank{rank}.pt")
        for got, want in zip(ranked, single):
            assert abs(got["loss"] - want["loss"]) < 1e-5
            assert got["grads"].keys() == want["grads"].keys()
            for name, g in want["grads"].items():
                if g is None:  # no gradient in one process (e.g. the summary attention's key bias)
                    assert got["grads"][name] is None or not got["grads"][name].any(), name
                    continue
                assert (got["grads"][name] - g).abs().max() < 1e-5, name
    assert single[0]["grads"]["weight_token"].abs().sum() > 0


# ----------------------------------------------------------------------------- a short run


def _run_worker(rank: int, port: int, cfg_dict: dict, run_dir: str, stop_after_epoch: int) -> None:
    from ralbook.runtime import process_group as distributed
    from ralbook.config import Config

    os.environ.update(rank_env(rank, WORLD, port))
    torch.set_num_threads(1)
    distributed.init_from_env(torch.device("cpu"), timeout_s=120)

    def stop(event, info):
        if event == "epoch" and info["epoch"] == stop_after_epoch:
            raise KeyboardInterrupt  # stands in for a kill after the epoch's checkpoint

    try:
        train(Config.from_dict(cfg_dict), run_dir, progress=False, callbacks=[stop])
    except KeyboardInterrupt:
        pass
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def single_run(root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "single"
    train(step_cfg(root), run_dir, progress=False)
    return run_dir


def test_a_two_rank_run_has_the_single_process_metrics(root, single_run, tmp_path):
    run_dir = tmp_path / "two"
    mp.spawn(_run_worker, args=(free_port(), step_cfg(root).to_dict(), str(run_dir), -1), nprocs=WORLD)
    want, got = read_metrics(single_run), read_metrics(run_dir)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        assert a["val"] == b["val"]  # shared evaluation: same ranks, same metrics
        for name, value in b["loss"].items():
            assert abs(a["loss"][name] - value) < 1e-5, name
    test_a = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert test_a == json.loads((single_run / "test_metrics.json").read_text())["metrics"]
    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    assert saved["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert not (run_dir.parent / "rank1").exists()


def test_resume_with_another_number_of_ranks(root, single_run, tmp_path):
    run_dir = tmp_path / "resumed"
    mp.spawn(_run_worker, args=(free_port(), step_cfg(root).to_dict(), str(run_dir), 0), nprocs=WORLD)
    assert len(read_metrics(run_dir)) == 1
    train(step_cfg(root), run_dir, resume=True, progress=False)  # the second epoch in one process
    want, got = read_metrics(single_run), read_metrics(run_dir)
    assert [r["val"] for r in got] == [r["val"] for r in want]
    for a, b in zip(got, want):
        assert abs(a["loss"]["total"] - b["loss"]["total"]) < 1e-5
    assert json.loads((run_dir / CONFIG_FILE).read_text())["distributed"]["world_size"] == 1


# ----------------------------------------------------------------------------- a failing rank


def test_a_failing_rank_ends_the_run_with_a_message(root, tmp_path):
    """Rank 1 cannot read its data; rank 0 must stop with an error within the timeout, not hang."""
    port = free_port()
    base = [sys.executable, "-m", "ralbook", "train", "--preset", "demo", "--epochs", "1", "--batch-size", "8",
            "--no-progress", "--dist-timeout", "60", "--out", str(tmp_path / "run")]
    sets = sum((["--set", f"{k}={v}"] for k, v in (("model.hidden_size", 16), ("model.n_heads", 2),
                                                     ("data.visual_dim", 24), ("data.text_dim", 16))), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    started = time.monotonic()
    procs = [subprocess.Popen(base + sets + ["--data-root", str(root if rank == 0 else tmp_path / "missing")],
                              env={**env, **rank_env(rank, WORLD, port)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(WORLD)]
    outputs = [p.communicate(timeout=170) for p in procs]
    assert time.monotonic() - started < 170
    assert [p.returncode for p in procs] == [2, 2], outputs
    assert "missing" in outputs[1][1]
    assert "lost the other ranks" in outputs[0][1] and "Traceback" not in outputs[0][1], outputs[0][1]


def _auto_worker(rank: int, port: int, cfg_dict: dict, run_dir: str, out_dir: str) -> None:
    """Rank 0 on a machine with native bf16, rank 1 on one without: train.amp=auto must not split them."""
    from ralbook.runtime import process_group as distributed
    from ralbook.config import Config

    os.environ.update(rank_env(rank, WORLD, port))
    os.environ["RALBOOK_NATIVE_BF16"] = "1" if rank == 0 else "0"
    torch.set_num_threads(1)
    distributed.init_from_env(torch.device("cpu"), timeout_s=120)
    try:
        train(Config.from_dict(cfg_dict), run_dir, progress=False)
        message = "trained"
    except RalbookError as err:
        message = str(err)
    finally:
        distributed.shutdown()
    (Path(out_dir) / f"rank{rank}.txt").write_text(message)


def test_ranks_that_resolve_auto_differently_stop_with_a_message(root, tmp_path):
    cfg = step_cfg(root).override("train.amp=auto")
    mp.spawn(_auto_worker, args=(free_port(), cfg.to_dict(), str(tmp_path / "run"), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "different precisions" in message and "['bf16', 'none']" in message, message
    assert not (tmp_path / "run" / "last.pt").exists()
