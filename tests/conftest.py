"""Shared fixtures. ``tiny_collection``: a small random collection in the release layout."""
from __future__ import annotations

import os

import pytest

# Tests choose their thread counts themselves (fixture one_thread); no load sampling or re-checks in between.
os.environ.setdefault("RALBOOK_THREADS", "1")
# train.amp=auto means bf16 on CPUs with AMX: the suite's numbers (fixtures, equivalences) are fp32 on any
# CPU; tests of the detection set this variable themselves. Subprocesses (papermill, torchrun) inherit it.
os.environ["RALBOOK_NATIVE_BF16"] = "0"
# Measurements cached per machine (ralbook.runtime.amp_probe) go to a folder of this session, never the user's cache.
if "RALBOOK_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["RALBOOK_CACHE_DIR"] = tempfile.mkdtemp(prefix="ralbook-test-cache-")

from layout import TinySpec, write_random_collection


@pytest.fixture(autouse=True)
def _threads_setting_is_restored():
    """`cli.main([... "--threads", "N"])` exports RALBOOK_THREADS for its notebook kernels and fixes this
    process's choice (ralbook.runtime.threads keeps the first one); neither may leak into later tests (a
    study's cache key records the thread count), so both are restored, with torch's own count."""
    import torch

    from ralbook.runtime import threads

    before, torch_before = os.environ.get("RALBOOK_THREADS"), torch.get_num_threads()
    yield
    if before is None:
        os.environ.pop("RALBOOK_THREADS", None)
    else:
        os.environ["RALBOOK_THREADS"] = before
    threads.reset()
    torch.set_num_threads(torch_before)


@pytest.fixture
def tiny_collection(tmp_path) -> TinySpec:
    """Twelve videos (6 train, 3 val, 3 test), Dv 8, Dt 6, feature.bin with contiguous rows."""
    return write_random_collection(tmp_path / "data")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster on one thread (and suffer less from a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
