"""Training never computes a loss, a step or a metric from NaN/inf: it stops with one message first."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ralbook import losses
from ralbook.config import preset
from ralbook.data.collection import Collection
from ralbook.data.demo import generate_demo
from ralbook.errors import NonFiniteError
from ralbook.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
DIMS = {"visual_dim": 12, "text_dim": 8}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_demo(root, n_train=16, n_val=4, n_test=4, latent_dim=4, **DIMS)
    return root


def cfg_for(root):
    return preset("demo", data={"data_root": str(root), **DIMS}, model={"hidden_size": 16, "n_heads": 2},
                  train={"n_epoch": 1, "batch_size": 8, "eval_video_chunk": 8})


@pytest.fixture
def assignment_sees_only_finite(monkeypatch):
    """Fails the test if scipy's assignment is ever handed a NaN or inf."""
    original = losses.linear_sum_assignment

    def checked(cost, maximize=False):
        assert np.isfinite(cost).all(), "the OT assignment received non-finite costs"
        return original(cost, maximize=maximize)

    monkeypatch.setattr(losses, "linear_sum_assignment", checked)


def test_extreme_features_stop_training_before_the_ot_step(data_root, tmp_path, monkeypatch,
                                                            assignment_sees_only_finite):
    """Finite features near float32's maximum overflow inside the model (LayerNorm's mean)."""
    original = Collection.video_arrays

    def extreme(self, video_id):
        clip, frames = original(self, video_id)
        return np.full_like(clip, 3e38), frames

    monkeypatch.setattr(Collection, "video_arrays", extreme)
    with pytest.raises(NonFiniteError, match=r"loss became non-finite in epoch 0 at step 1 \((model outputs|weights after the step): "):
        train(cfg_for(data_root), tmp_path / "run", progress=False)


def test_non_finite_features_are_named(data_root, tmp_path, monkeypatch):
    original = Collection.video_arrays

    def broken(self, video_id):
        clip, frames = original(self, video_id)
        frames = frames.copy()
        frames[0, 0] = np.nan
        return clip, frames

    monkeypatch.setattr(Collection, "video_arrays", broken)
    with pytest.raises(NonFiniteError, match=r"non-finite \(NaN or inf\) features for 8 video\(s\) \['"):
        train(cfg_for(data_root), tmp_path / "run", progress=False)


def test_a_nan_weight_stops_training_at_the_next_step(data_root, tmp_path, assignment_sees_only_finite):
    trainer = Trainer(cfg_for(data_root), tmp_path / "run", progress=False)
    with torch.no_grad():
        trainer.model.query_proj.linear.weight[0, 0] = float("nan")
    batches = [[0, 1, 2, 3]]
    batch = next(iter(trainer._loader(batches)))
    with pytest.raises(NonFiniteError, match="model outputs"):
        trainer.train_step(batch, hard_negatives=False)


def test_a_diverging_step_is_caught_in_the_weights(data_root, tmp_path):
    trainer = Trainer(cfg_for(data_root), tmp_path / "run", progress=False)
    batch = next(iter(trainer._loader([[0, 1, 2, 3]])))
    original = trainer.optimizer.step

    def diverge(*args, **kwargs):
        original(*args, **kwargs)
        with torch.no_grad():
            trainer.model.frame_proj.linear.bias.fill_(float("inf"))

    trainer.optimizer.step = diverge
    with pytest.raises(NonFiniteError, match=r"weights after the step: 'frame_proj\.linear\.bias'"):
        trainer.train_step(batch, hard_negatives=False)


def test_the_ot_step_refuses_non_finite_similarities():
    pooled = torch.randn(4, 6)
    pooled[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="optimal-transport"):
        losses.optimal_transport(pooled, torch.randn(2, 5, 6), torch.tensor([0, 0, 1, 1]))
