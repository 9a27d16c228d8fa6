"""Shared fixtures. ``tiny_collection``: a small random collection in the release layout."""
from __future__ import annotations

import pytest

from layout import TinySpec, write_random_collection


@pytest.fixture
def tiny_collection(tmp_path) -> TinySpec:
    """Twelve videos (6 train, 3 val, 3 test), Dv 8, Dt 6, feature.bin with contiguous rows."""
    return write_random_collection(tmp_path / "data")
