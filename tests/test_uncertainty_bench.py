"""The uncertainty benchmark's core (issue 23): risk-coverage, AURC, calibration, temperature, evidential
uncertainty and loss, MC dropout and ensembles, each against an independent computation."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ralbook.config import LossConfig
from ralbook.errors import DataError
from ralbook.losses import Objective, candidate_columns, evidential
from ralbook.model import ModelOutput
from ralbook.studies import uncertainty_metrics as um
from ralbook.studies import uncertainty_methods as methods

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


# ----------------------------------------------------------------------------- AURC by brute force


def strict_aurc(order, loss) -> float:
    """AURC of one strict ordering: the mean over k of the mean loss of its first k queries."""
    kept = np.asarray(loss, dtype=float)[list(order)]
    return float(np.mean([kept[:k].mean() for k in range(1, len(kept) + 1)]))


def brute_force_aurc(uncertainty, loss) -> float:
    """Expected AURC over every ordering consistent with the uncertainty (ties in any order, equally likely)."""
    values = [strict_aurc(p, loss) for p in itertools.permutations(range(len(loss)))
              if all(uncertainty[a] <= uncertainty[b] for a, b in zip(p, p[1:]))]
    return float(np.mean(values))


CASES = [([0.1, 0.5, 0.2, 0.9, 0.3, 0.3], [0, 1, 0, 1, 1, 0]),
         ([1, 1, 1, 2, 2, 0], [1, 0, 0, 1, 0, 1]),          # ties that mix hits and failures
         ([3, 1, 4, 1, 5, 9, 2], [0, 0, 1, 1, 0, 1, 0])]


@pytest.mark.parametrize("uncertainty, loss", CASES)
def test_aurc_equals_the_expectation_over_tie_orders(uncertainty, loss):
    u, l = np.asarray(uncertainty, float), np.asarray(loss, float)
    assert um.aurc(u, l) == pytest.approx(brute_force_aurc(u, l), abs=1e-12)
    # the input order does not matter
    perm = np.random.default_rng(0).permutation(len(l))
    assert um.aurc(u[perm], l[perm]) == pytest.approx(um.aurc(u, l), abs=1e-12)


@pytest.mark.parametrize("uncertainty, loss", CASES)
def test_oracle_is_the_best_ordering_and_the_reversed_one_the_worst(uncertainty, loss):
    l = np.asarray(loss, float)
    every = [strict_aurc(p, l) for p in itertools.permutations(range(len(l)))]
    assert um.oracle_aurc(l) == pytest.approx(min(every), abs=1e-12)
    assert um.aurc(l, l) == pytest.approx(min(every), abs=1e-12)         # perfect ordering = oracle
    assert um.excess_aurc(l, l) == pytest.approx(0.0, abs=1e-12)
    assert um.aurc(-l, l) == pytest.approx(max(every), abs=1e-12)        # reversed ordering = worst
    assert um.random_aurc(l) == pytest.approx(np.mean(every), abs=1e-12)  # random = mean over orderings
    assert um.aurc(np.zeros_like(l), l) == pytest.approx(np.mean(every), abs=1e-12)  # all tied = random
    assert um.excess_aurc(uncertainty, l) >= -1e-12


def test_oracle_aurc_closed_form():
    """m failures among n: the oracle keeps the n - m hits first, so AURC = (1/n) sum_{k>n-m} (k-(n-m))/k."""
    n, m = 10, 3
    loss = np.array([1.0] * m + [0.0] * (n - m))
    want = sum((k - (n - m)) / k for k in range(n - m + 1, n + 1)) / n
    assert um.oracle_aurc(loss) == pytest.approx(want, abs=1e-12)


def test_risk_coverage_points_and_grid():
    u, l = np.array([0.1, 0.5, 0.2, 0.9, 0.3]), np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    curve = um.risk_coverage(u, l)
    assert curve.coverage == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve.risk == pytest.approx([0, 0, 1 / 3, 2 / 4, 3 / 5])     # kept in order 0.1, 0.2, 0.3, 0.5, 0.9
    on_grid = um.risk_coverage(u, l, [0.4, 1.0, 0.5])
    assert on_grid.risk[:2] == pytest.approx([0.0, 0.6])
    assert on_grid.risk[2] == pytest.approx(0.5 / 2.5)                    # half of the third query kept
    with pytest.raises(DataError, match="coverages"):
        um.risk_coverage(u, l, [0.0, 0.5])
    with pytest.raises(DataError, match="5 queries but loss has 4"):
        um.aurc(u, l[:4])


def test_failure_auroc_against_pair_counts():
    rng = np.random.default_rng(1)
    ranks = rng.integers(1, 30, 40)
    u = rng.integers(0, 5, 40).astype(float)   # many ties
    failed = um.failures(ranks, 10)
    assert (failed == (ranks > 10)).all()
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in u[failed] for b in u[~failed]]
    assert um.failure_auroc(u, failed) == pytest.approx(np.mean(pairs), abs=1e-12)
    with pytest.raises(DataError, match="both failed and successful"):
        um.failure_auroc(u, np.ones(40, bool))


# ----------------------------------------------------------------------------- calibration


def test_ece_of_a_hand_table():
    conf = np.array([0.05, 0.15, 0.15, 0.95, 1.0, 0.55])
    hit = np.array([0, 1, 0, 1, 1, 0])
    table = um.calibration_table(conf, hit, n_bins=10)
    assert table.count.tolist() == [1, 2, 1, 2]            # bins [0,.1), [.1,.2), [.5,.6), [.9,1]
    assert table.lower == pytest.approx([0.0, 0.1, 0.5, 0.9])
    want = (1 * 0.05 + 2 * abs(0.5 - 0.15) + 1 * 0.55 + 2 * abs(1 - 0.975)) / 6
    assert table.ece == pytest.approx(want, abs=1e-12)
    # equal mass, stable sort: (.05 miss, .15 hit) | (.15 miss, .55 miss) | (.95 hit, 1.0 hit)
    mass = um.calibration_table(conf, hit, n_bins=3, binning="mass")
    assert mass.count.tolist() == [2, 2, 2]
    want_mass = (2 * abs(0.5 - 0.1) + 2 * abs(0.0 - 0.35) + 2 * abs(1 - 0.975)) / 6
    assert mass.ece == pytest.approx(want_mass, abs=1e-12)


@pytest.mark.parametrize("binning", um.BINNINGS)
def test_ece_of_calibrated_and_of_shifted_probabilities(binning):
    """Calibrated: E[hit | p] = p, so ECE is sampling noise only, at most about sqrt(B / n) / 2 per bin
    average; with n = 200000 and B = 10 that is 0.0035: tolerance 3x = 0.011. Shifted by +0.1 (p clipped
    into [0.1, 0.8] before the shift, so no clipping afterwards): every bin is over-confident by exactly
    0.1 in expectation, so ECE = 0.1 within the same tolerance."""
    n, bins = 200_000, 10
    tol = 3 * math.sqrt(bins / n) / 2
    rng = np.random.default_rng(7)
    p = rng.uniform(0.1, 0.8, n)
    hit = (rng.uniform(size=n) < p).astype(float)
    assert um.expected_calibration_error(p, hit, bins, binning) < tol
    assert um.expected_calibration_error(p + 0.1, hit, bins, binning) == pytest.approx(0.1, abs=tol)
    assert um.expected_calibration_error(p - 0.05, hit, bins, binning) == pytest.approx(0.05, abs=tol)


def test_temperature_fit_recovers_a_known_temperature():
    """Targets drawn from softmax(z / 0.07) over 25 columns, 8000 rows: the maximum-likelihood temperature
    is within 5% of 0.07 (its standard error here is about 1%), and the fitted NLL is not above the truth's."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 0.1, (8000, 25))
    p = np.exp(um.log_softmax(z, 0.07))
    targets = (p.cumsum(axis=1) < rng.uniform(size=(8000, 1))).sum(axis=1)
    t = um.fit_temperature(z, targets)
    assert t == pytest.approx(0.07, rel=0.05)
    assert um.temperature_nll(z, targets, t) <= um.temperature_nll(z, targets, 0.07) + 1e-12
    probability = um.top1_probability(z, t)
    assert probability == pytest.approx(np.exp(um.log_softmax(z, t)).max(axis=1))
    with pytest.raises(DataError, match="column indices"):
        um.fit_temperature(z, targets + 25)


# ----------------------------------------------------------------------------- evidential


def test_evidential_u_of_uniform_scores_is_its_closed_form():
    """Equal scores s over K candidates: alpha = exp(s / tau) + 1 each, S = K alpha, u = K / S = 1 / alpha."""
    for s, tau, k in ((0.3, 0.05, 4), (-0.2, 0.1, 7), (2.0, 0.05, 3)):
        scores = np.full((3, 9), s)
        d = um.dirichlet_from_scores(scores, k, tau)
        e = math.exp(min(max(s / tau, -um.EVIDENCE_LOG_CAP), um.EVIDENCE_LOG_CAP))
        assert d.uncertainty == pytest.approx([1 / (1 + e)] * 3, rel=1e-12)
        assert d.probability == pytest.approx(np.full((3, k), 1 / k))
        assert d.candidates.tolist() == [list(range(k))] * 3   # ties: lowest columns first


def test_evidential_candidates_come_from_the_first_stage():
    fused = np.array([[0.9, 0.1, 0.5, 0.2]])
    clip = np.array([[0.0, 0.8, 0.7, 0.1]])
    d = um.dirichlet_from_scores(fused, 2, 0.5, first_stage=clip)
    assert d.candidates.tolist() == [[1, 2]]
    alpha = np.exp(np.array([0.1, 0.5]) / 0.5) + 1
    assert d.alpha[0] == pytest.approx(alpha)
    assert d.uncertainty[0] == pytest.approx(2 / alpha.sum())


def test_numpy_and_torch_evidence_agree():
    from ralbook.losses import EVIDENCE_LOG_CAP, evidence

    s = np.linspace(-3, 3, 13)
    assert EVIDENCE_LOG_CAP == um.EVIDENCE_LOG_CAP
    assert evidence(torch.tensor(s), 0.1).numpy() == pytest.approx(um.evidence(s, 0.1))


def test_evidential_loss_by_hand():
    scores = torch.tensor([[0.2, 0.9, -0.1, 0.4], [0.3, 0.3, 0.8, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    k, tau = 3, 0.5
    assert candidate_columns(scores, labels, k).tolist() == [[0, 1, 3], [2, 0, 1]]
    total = 0.0
    for row, cols in ((scores[0].tolist(), [0, 1, 3]), (scores[1].tolist(), [2, 0, 1])):
        alpha = [math.exp(row[c] / tau) + 1 for c in cols]
        strength = sum(alpha)
        for j, a in enumerate(alpha):
            p = a / strength
            total += ((1.0 if j == 0 else 0.0) - p) ** 2 + p * (1 - p) / (strength + 1)
    assert evidential(scores, labels, k, tau).item() == pytest.approx(total / 2, rel=1e-12)
    # K larger than the batch: every video is a candidate
    assert candidate_columns(scores, labels, 10).shape == (2, 4)


def fake_output(seed: int = 0) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)
    nq, nv, d = 6, 4, 5
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    return ModelOutput(torch.rand(nq, nv, generator=g), torch.randn(nq, nv, generator=g),
                       torch.rand(nq, nv, generator=g), torch.randn(nq, nv, generator=g),
                       torch.randn(nq, d, generator=g), torch.randn(nv, 3, d, generator=g), labels,
                       backbone="gmmformer")


def test_evidential_weight_zero_leaves_the_total_unchanged_and_a_weight_adds_its_term():
    """The triplet terms sample negatives: every call gets the same seeded generator."""
    def run(cfg: LossConfig):
        return Objective(cfg)(fake_output(), generator=torch.Generator().manual_seed(0))

    base, base_parts = run(LossConfig())
    off, off_parts = run(LossConfig(evidential_weight=0.0, evidential_k=3))
    assert "evidential" not in off_parts and off.item() == base.item()
    assert base.item() == pytest.approx(sum(v.item() for v in base_parts.values()), rel=1e-6)
    cfg = LossConfig(evidential_weight=0.5, evidential_k=3, evidential_tau=0.2)
    total, parts = run(cfg)
    out = fake_output()
    term = (evidential(out.clip_scores, out.labels, 3, 0.2) + evidential(out.frame_scores, out.labels, 3, 0.2)) / 2
    assert parts["evidential"].item() == pytest.approx(0.5 * term.item(), rel=1e-6)
    assert total.item() == pytest.approx(base.item() + 0.5 * term.item(), rel=1e-6)
    assert {k: v.item() for k, v in parts.items() if k != "evidential"} == {k: v.item() for k, v in base_parts.items()}


def test_evidential_settings_are_checked():
    from ralbook.errors import ConfigError

    for bad in ({"evidential_weight": -0.1}, {"evidential_k": 1}, {"evidential_tau": 0.0}):
        with pytest.raises(ConfigError, match="loss.evidential"):
            LossConfig(**bad)


# ----------------------------------------------------------------------------- MC dropout and ensembles


def tiny_model_and_collection(root, drop: float):
    from layout import write_random_collection

    from ralbook.config import DataConfig, ModelConfig
    from ralbook.data.collection import Collection
    from ralbook.model import build_model

    spec = write_random_collection(root)
    collection = Collection.from_config(DataConfig(data_root=str(spec.root), collection=spec.name,
                                                   feature=spec.feature, visual_dim=8, text_dim=6))
    torch.manual_seed(0)
    model = build_model(ModelConfig(visual_dim=8, text_dim=6, hidden_size=8, n_heads=2, input_drop=drop, drop=drop))
    return model, collection


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_mc_dropout_variance_is_zero_without_dropout_only(tmp_path, drop):
    model, collection = tiny_model_and_collection(tmp_path, drop)
    scores = methods.split_scores(model, collection, "train")
    out = methods.mc_dropout(model, collection, scores, passes=3, seed=1)
    assert model.training  # mode restored (build_model returns a module in training mode)
    if drop == 0.0:
        assert (out["mc_score_var"] == 0).all() and (out["mc_rank_var"] == 0).all()
    else:  # the same passes again give the same numbers; some queries vary
        again = methods.mc_dropout(model, collection, scores, passes=3, seed=1)
        assert (out["mc_score_var"] == again["mc_score_var"]).all()
        assert (out["mc_score_var"] > 0).all()


def test_ensemble_of_identical_runs_has_zero_disagreement():
    rng = np.random.default_rng(2)
    fused = rng.normal(size=(7, 5))
    run = methods.SplitScores([f"c{i}" for i in range(7)], [f"v{j}" for j in range(5)], fused, fused,
                              np.ones(7, int), np.zeros(7, int), np.ones(7))
    same = methods.ensemble_disagreement([run, run, run])
    assert (same["ensemble_score_var"] == 0).all() and (same["ensemble_disagreement"] == 0).all()
    other = methods.SplitScores(run.cap_ids, run.video_ids, -fused, -fused, run.ranks, run.targets, run.lengths)
    mixed = methods.ensemble_disagreement([run, run, other])
    top_same, top_other = fused.argmax(axis=1), (-fused).argmax(axis=1)
    assert mixed["ensemble_disagreement"] == pytest.approx(np.where(top_same != top_other, 1 / 3, 0.0))
    chosen = (fused + fused - fused).argmax(axis=1)   # mean of the three runs = fused / 3
    values = np.stack([fused, fused, -fused])[:, np.arange(7), chosen]
    assert mixed["ensemble_score_var"] == pytest.approx(values.var(axis=0))


# ----------------------------------------------------------------------------- the table


def test_benchmark_table_on_constructed_inputs():
    """A method equal to the failure indicator plus small noise predicts failure perfectly (AUROC 1, E-AURC 0)
    and beats every free baseline, which are pure noise here; intervals hold their estimates."""
    rng = np.random.default_rng(4)
    n = 120
    ranks = np.where(rng.uniform(size=n) < 0.4, rng.integers(2, 40, n), 1)
    failed = (ranks > 1).astype(float)
    uncertainty = {b: rng.normal(size=n) for b in methods.FREE_BASELINES}
    uncertainty["good"] = failed + 0.01 * rng.normal(size=n)
    hit = 1 - failed
    inputs = methods.UncertaintyInputs([f"c{i}" for i in range(n)], ranks, uncertainty,
                                       {"constant": np.full(n, hit.mean())})
    table = methods.benchmark(inputs, ambiguous={f"c{i}": int(i % 2) for i in range(0, n, 2)} | {"c1": 1},
                              n_boot=200)
    f1 = table["failure@1"]
    assert f1["methods"]["good"]["auroc"][0] == 1.0
    assert f1["methods"]["good"]["e_aurc"][0] == pytest.approx(0.0, abs=1e-12)
    assert f1["versus"]["good"]["verdict"] == "better"
    for entry in f1["methods"].values():
        for est, low, high in entry.values():
            assert low - 1e-12 <= est <= high + 1e-12
    assert f1["oracle_aurc"] == pytest.approx(um.oracle_aurc(failed))
    assert table["ambiguity"]["n"] == n // 2 + 1
    # a constant probability equal to the hit rate: one bin, ECE 0
    assert table["calibration"]["constant"]["ece"][0] == pytest.approx(0.0, abs=1e-12)
    curves = methods.curves(inputs, 1)
    assert curves["oracle"][-1] == pytest.approx(failed.mean()) and curves["methods"]["good"][-1] == pytest.approx(
        failed.mean())


def test_collect_on_an_untrained_tiny_model(tmp_path):
    """Every method runs end to end and gives one finite value per query."""
    model, collection = tiny_model_and_collection(tmp_path, 0.2)
    scores = methods.split_scores(model, collection, "train")
    val = methods.split_scores(model, collection, "val")
    got = methods.collect(model, collection, "train", val_scores=val, scores=scores, ensemble=[scores], mc_passes=2,
                          evidential_k=4)
    n = len(scores.cap_ids)
    want = set(methods.FREE_BASELINES) | {"sigma", "proxy_spread", "mc_score_var", "mc_rank_var", "ensemble_score_var",
                                          "ensemble_disagreement", "evidential_u"}
    assert set(got.uncertainty) == want
    for values in got.uncertainty.values():
        assert values.shape == (n,) and np.isfinite(values).all()
    assert (got.uncertainty["ensemble_disagreement"] == 0).all()
    assert set(got.probability) == {"evidential", "softmax"} and got.temperature > 0
    for p in got.probability.values():
        assert ((p >= 0) & (p <= 1)).all()
