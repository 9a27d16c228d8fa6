"""MSRA diagnostics against hand computation and against the loss functions they describe."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ralbook.config import LossConfig
from ralbook.errors import DataError
from ralbook.losses import distribution_alignment, proxy_matching
from ralbook.studies import msra
from ralbook.training.reproducibility import epoch_batches


def records() -> list[dict]:
    return [{"epoch": 1, "loss": {"total": 2.0, "clip_nce": 1.5, "proxy_matching": 0.4, "distribution_alignment": 0.1}},
            {"epoch": 2, "loss": {"total": 1.0, "clip_nce": 0.9, "proxy_matching": 0.08, "distribution_alignment": 0.02}}]


def test_loss_shares_by_hand():
    shares = msra.loss_shares(records())
    assert shares["clip_nce"] == pytest.approx([0.75, 0.9])
    assert shares["proxy_matching"] == pytest.approx([0.2, 0.08])
    assert shares["distribution_alignment"] == pytest.approx([0.05, 0.02])
    with pytest.raises(DataError, match="epoch 3"):
        msra.loss_shares([{"epoch": 3, "loss": {"total": 0.0, "a": 0.0}}])


def test_unweighted_terms_divide_by_the_configured_weight():
    cfg = LossConfig(pm_weight=0.004, da_weight=0.00025)
    raw = msra.unweighted_terms(records(), cfg)
    assert raw["proxy_matching"] == pytest.approx([100.0, 20.0])
    assert raw["distribution_alignment"] == pytest.approx([400.0, 80.0])
    assert msra.unweighted_terms(records(), LossConfig(pm_weight=0.0, da_weight=0.00025)).keys() == {"distribution_alignment"}


@pytest.mark.parametrize("n,b", [(10, 4), (12, 4), (3, 5)])
def test_batch_sizes_match_the_trainers_batches(n, b):
    assert msra.batch_sizes(n, b) == [len(x) for x in epoch_batches(n, b, seed=0, epoch=1)]


@pytest.mark.parametrize("b,k", [(5, 3), (2, 6)])
def test_pm_uniform_value_is_the_loss_of_equal_similarities(b, k):
    # identical proxies: every similarity equal, so each row's softmax is uniform over the B*K columns
    same = torch.ones(b, k, 4)
    assert proxy_matching(same, same).item() == pytest.approx(math.log(b * k), rel=1e-6)
    assert msra.pm_uniform_value([b], k) == pytest.approx(math.log(b * k))
    # an epoch mean over a short last batch averages the batches' own values
    assert msra.pm_uniform_value([4, 4, 2], 6) == pytest.approx((2 * math.log(24) + math.log(12)) / 3)


def test_da_reference_matches_the_loss_by_monte_carlo():
    """1 + 2d/K against L_DA on sampled proxies (sigma = 1, same unit mean); 20,000 instances keep the
    Monte Carlo error below 1% of the value, the tolerance is 3%."""
    d, k, n = 8, 4, 20000
    g = torch.Generator().manual_seed(0)
    mu = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    zero = torch.zeros(n, d)
    video = mu[:, None, :] + torch.randn(n, k, d, generator=g)
    text = mu[:, None, :] + torch.randn(n, k, d, generator=g)
    value = distribution_alignment(video, zero, text, zero).item()
    assert value == pytest.approx(msra.da_reference(d, k), rel=0.03)
    assert msra.da_reference(d, k) == 5.0


def test_sigma_to_mean_by_hand_and_its_interval():
    mu = np.array([[3.0, 4.0], [1.0, 0.0]])
    log_sigma = np.log(np.array([[0.3, 0.4], [0.06, 0.08]]))
    assert msra.sigma_to_mean(mu, log_sigma) == pytest.approx([0.1, 0.1])
    with pytest.raises(DataError, match="one shape"):
        msra.sigma_to_mean(mu, log_sigma[:1])
    est = msra.scale_estimates({"captions": (mu, log_sigma)}, n_boot=50)["captions"]
    assert est.value == pytest.approx(0.1) and est.low == pytest.approx(0.1) and est.n == 2


def test_msra_text_states_the_numbers():
    shares = msra.loss_shares(records())
    raw = msra.unweighted_terms(records(), LossConfig())
    refs = {"proxy_matching": 200.0, "distribution_alignment": 5.0}
    scales = msra.scale_estimates({"captions": (np.array([[1.0, 0.0]] * 3), np.log([[0.01, 0.02], [0.02, 0.01],
                                                                                       [0.01, 0.01]]))}, n_boot=50)
    lines = msra.msra_text(shares, raw, refs, [1, 2], scales)
    assert "10.00% of the total loss at epoch 2 (from 10.00% to 25.00%" in lines[0]
    assert "L_PM is 20.000 at epoch 2 (epoch 1: 100.000) against 200.000" in lines[1] and "90.0% below" in lines[1]
    assert "L_DA is 80.000" in lines[2] and "against 5.000" in lines[2]
    assert "||sigma|| / ||mu||" in lines[3] and "95% CI" in lines[3] and "3 captions" in lines[3]
    worse = msra.msra_text(shares, {"proxy_matching": [5.0, 5.5]}, {"proxy_matching": 5.0}, [1, 2])
    assert "10.0% above it" in worse[1] and "below it" not in worse[1]
    # (2 sqrt(0.0005) + sqrt(0.0002)) / 3 = 0.0196
    assert "0.0196 times the mean's length" in lines[3]
    off = msra.msra_text(msra.loss_shares([{"epoch": 1, "loss": {"total": 1.0, "clip_nce": 1.0}}]), {}, {}, [1])
    assert "model.msra off" in off[0]
