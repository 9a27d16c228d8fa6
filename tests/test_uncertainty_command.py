"""The uncertainty benchmark's verdicts through ralbook.stats, its printed table, and `ralbook uncertainty`
on a tiny trained run (exhaustive and two-stage), with the provenance its JSON records."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ralbook import cli, stats
from ralbook.studies import uncertainty_methods as methods
from ralbook.studies import uncertainty_metrics as um

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


# ----------------------------------------------------------------------------- paired comparisons


def constructed(n: int = 160, seed: int = 3):
    """Ranks with about 40% failures, four noise baselines, and a method that is the failure indicator."""
    rng = np.random.default_rng(seed)
    ranks = np.where(rng.uniform(size=n) < 0.4, rng.integers(2, 40, n), 1)
    failed = (ranks > 1).astype(float)
    u = {b: rng.normal(size=n) for b in methods.FREE_BASELINES}
    return rng, ranks, failed, u


def test_paired_metric_estimate_is_the_plain_difference_and_swapping_mirrors_it():
    rng, _, failed, u = constructed()
    a, b = failed + rng.normal(0, 0.5, failed.size), u["entropy"]
    c = methods.paired_metric(um.aurc, a, b, failed, name_a="a", name_b="b", metric_name="AURC",
                              higher_is_better=False, n_boot=300, seed=1)
    assert c.estimate == pytest.approx(um.aurc(a, failed) - um.aurc(b, failed), abs=1e-12)
    assert c.verdict == "better"  # a informative ordering has a lower AURC than noise
    back = methods.paired_metric(um.aurc, b, a, failed, name_a="b", name_b="a", metric_name="AURC",
                                 higher_is_better=False, n_boot=300, seed=1)
    assert (back.estimate, back.low, back.high) == pytest.approx((-c.estimate, -c.high, -c.low), abs=1e-12)
    assert back.verdict == "worse"
    assert stats.describe(c).startswith("a is better than b") and stats.describe(back).startswith("b is worse than a")


def test_paired_metric_resamples_queries_in_pairs():
    """Identical methods differ by exactly 0 in every resample: a zero-width interval at 0, undecided."""
    _, _, failed, u = constructed()
    c = methods.paired_metric(um.aurc, u["entropy"], u["entropy"].copy(), failed, name_a="x", name_b="y",
                              metric_name="AURC", higher_is_better=False, n_boot=100, seed=0)
    assert (c.estimate, c.low, c.high) == (0.0, 0.0, 0.0) and c.verdict == "undecided"


def test_a_tiny_difference_never_reads_as_a_win():
    """The strongest baseline plus noise far below its spread: 'cannot be told apart', never 'better'."""
    rng, ranks, failed, u = constructed()
    u["neg_margin"] = failed + rng.normal(size=failed.size)   # the one informative baseline
    u["copy"] = u["neg_margin"] + 1e-3 * rng.normal(size=failed.size)
    table = methods.benchmark(methods.UncertaintyInputs([f"c{i}" for i in range(failed.size)], ranks, u),
                              n_boot=300)
    assert table["failure@1"]["baseline"] == "neg_margin"
    row = table["failure@1"]["versus"]["copy"]
    assert row["verdict"] == "undecided"
    sentence = stats.describe(stats.Comparison.from_dict(row["aurc"]))
    assert "cannot be told apart" in sentence and "better" not in sentence


def test_benchmark_verdicts_are_stats_comparisons_and_sentences_word_them():
    rng, ranks, failed, u = constructed()
    u["good"] = failed + 0.01 * rng.normal(size=failed.size)
    n = failed.size
    hit = 1 - failed
    probability = {"softmax": np.clip(hit.mean() + 0.05 * rng.normal(size=n), 0, 1),
                   "overconfident": np.full(n, 0.99)}
    table = methods.benchmark(methods.UncertaintyInputs([f"c{i}" for i in range(n)], ranks, u, probability),
                              n_boot=300)
    row = table["failure@1"]["versus"]["good"]
    assert row["verdict"] == "better" and row["aurc"]["metric"] == "AURC" and row["aurc"]["higher_is_better"] is False
    assert row["auroc"]["metric"] == "AUC" and row["auroc"]["flipped_a"] is False and row["auroc"]["flipped_b"] is False
    # AURC difference recomputed directly
    base = table["failure@1"]["baseline"]
    assert row["aurc"]["estimate"] == pytest.approx(um.aurc(u["good"], failed) - um.aurc(u[base], failed))
    # ECE: 0.99 for every query when about 60% hit is worse than the softmax near the hit rate
    ece = table["calibration_versus"]["overconfident"]
    assert ece["verdict"] == "worse" and ece["estimate"] == pytest.approx(
        um.expected_calibration_error(probability["overconfident"], hit)
        - um.expected_calibration_error(probability["softmax"], hit))
    words = methods.sentences(table)
    assert any(s.startswith("good is better than") for s in words["failure@1"])
    assert any(s.startswith("overconfident is worse than softmax") for s in words["calibration"])
    assert any("above chance" in s and "good" in s for s in words["failure@1"])
    shows = methods.what_this_shows(table)
    assert shows.startswith("**What this shows**") and f"`{base}`" in shows and "1 of 1 model-based methods are better" in shows
    text = methods.format_table(table, title="T")
    assert "good" in text and "failure@1 AUROC" in text and "calibration overconfident: ECE" in text


def test_ambiguity_baseline_may_be_flipped_but_not_the_method():
    """A baseline that separates ambiguity the other way round is compared as 1 - AUC; the method is not."""
    rng = np.random.default_rng(0)
    n = 200
    labels = (np.arange(n) % 2).astype(bool)
    u = {b: rng.normal(size=n) for b in methods.FREE_BASELINES}
    u["length"] = -labels.astype(float) + 0.3 * rng.normal(size=n)   # strongly informative, reversed
    u["method"] = labels.astype(float) + 0.3 * rng.normal(size=n)
    ranks = np.where(rng.uniform(size=n) < 0.5, 5, 1)
    inputs = methods.UncertaintyInputs([f"c{i}" for i in range(n)], ranks, u)
    table = methods.benchmark(inputs, ambiguous={f"c{i}": int(labels[i]) for i in range(n)}, n_boot=200)
    amb = table["ambiguity"]
    assert amb["baseline"] == "length"
    row = amb["versus"]["method"]["auroc"]
    assert row["flipped_b"] is True and row["flipped_a"] is False
    assert row["value_b"] == pytest.approx(1 - um.failure_auroc(u["length"], labels))


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny demo runs (seeds 0 and 1) of one collection, one epoch each."""
    from ralbook.config import preset
    from ralbook.data.demo import generate_demo
    from ralbook.training.trainer import train

    root = tmp_path_factory.mktemp("unc_data")
    dims = {"visual_dim": 24, "text_dim": 16}
    generate_demo(root, n_train=24, n_val=8, n_test=16, latent_dim=8, **dims)
    out = []
    for seed in (0, 1):
        cfg = preset("demo", data={"data_root": str(root), **dims}, model={"hidden_size": 16, "n_heads": 2},
                     train={"n_epoch": 1, "batch_size": 8, "patience": 100, "eval_query_chunk": 64,
                            "eval_video_chunk": 16, "seed": seed})
        run_dir = tmp_path_factory.mktemp(f"unc_run{seed}") / "run"
        train(cfg, run_dir, progress=False)
        out.append(run_dir)
    return root, out


# ralbook.runtime.provenance.result_provenance's keys, plus what this command adds
PROVENANCE = {"checkpoint", "split", "labels", "n_boot", "seed", "environment", "command", "created", "ensemble",
              "collection", "val_split", "index", "rerank", "mc_dropout_passes", "evidential_k"}


def test_cli_uncertainty_with_an_ensemble_labels_and_provenance(runs, tmp_path, capsys):
    import hashlib

    from ralbook.data.demo import load_ground_truth
    from ralbook.studies.uncertainty import write_labels

    root, (run0, run1) = runs
    truth = load_ground_truth(root, "demo")
    write_labels(tmp_path / "amb.tsv", {c: t.ambiguity for c, t in truth.captions.items() if t.split == "test"})
    out = tmp_path / "u" / "bench.json"
    # a run folder for the model, a checkpoint file for the ensemble member
    assert cli.main(["uncertainty", "--checkpoint", str(run0), "--ensemble", str(run1 / "best.pt"),
                     "--mc-dropout", "2", "--labels", str(tmp_path / "amb.tsv"), "--n-boot", "50",
                     "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    prov = got["provenance"]
    assert PROVENANCE <= set(prov)
    assert prov["checkpoint"] == {"path": str((run0 / "best.pt").resolve()),
                                  "sha256": hashlib.sha256((run0 / "best.pt").read_bytes()).hexdigest()}
    assert prov["ensemble"] == [{"path": str((run1 / "best.pt").resolve()),
                                 "sha256": hashlib.sha256((run1 / "best.pt").read_bytes()).hexdigest()}]
    assert prov["split"] == "test" and prov["n_boot"] == 50 and prov["mc_dropout_passes"] == 2
    assert prov["labels"] == [{"path": str((tmp_path / "amb.tsv").resolve()),
                               "sha256": hashlib.sha256((tmp_path / "amb.tsv").read_bytes()).hexdigest()}]
    assert set(prov["environment"]) >= {"ralbook", "torch", "python"}
    table = got["table"]
    want = {"ensemble_disagreement", "ensemble_score_var", "mc_score_var", "mc_rank_var", "evidential_u", "sigma"}
    for q in ("failure@1", "failure@10", "ambiguity"):
        if "methods" in table[q]:
            assert want <= set(table[q]["methods"]) and all(name in printed for name in want)
    assert table["ambiguity"].get("n") == len([c for c, t in truth.captions.items() if t.split == "test"])
    assert set(got["curves"]["failure@1"]) == {"coverage", "oracle", "random", "methods"}
    assert got["what_this_shows"].startswith("**What this shows**")
    for stem in ("bench_risk_coverage.png", "bench_reliability.png"):
        assert (out.parent / stem).stat().st_size > 1000


def test_cli_uncertainty_through_a_two_stage_index(runs, tmp_path, capsys):
    """With K = every video the reranked top K is the exhaustive ranking: the same ranks and free baselines."""
    root, (run0, _) = runs
    assert cli.main(["index", "--checkpoint", str(run0 / "best.pt"), "--split", "test", "--out",
                     str(tmp_path / "idx"), "--no-progress"]) == 0
    n_videos = 16
    out = tmp_path / "two.json"
    assert cli.main(["uncertainty", "--checkpoint", str(run0), "--index", str(tmp_path / "idx"), "--rerank",
                     str(n_videos), "--n-boot", "20", "--json", str(out), "--no-progress"]) == 0
    full = tmp_path / "full.json"
    assert cli.main(["uncertainty", "--checkpoint", str(run0), "--n-boot", "20", "--json", str(full),
                     "--no-progress"]) == 0
    a, b = json.loads(out.read_text()), json.loads(full.read_text())
    assert a["provenance"]["rerank"] == n_videos and a["provenance"]["index"].endswith("idx")
    for q in ("failure@1", "failure@10"):
        if "methods" in b["table"][q]:
            for name in ("neg_margin", "neg_top1"):
                assert a["table"][q]["methods"][name]["auroc"][0] == pytest.approx(
                    b["table"][q]["methods"][name]["auroc"][0], abs=1e-4)
    assert cli.main(["uncertainty", "--checkpoint", str(run0), "--index", str(tmp_path / "idx"), "--mc-dropout", "2",
                     "--no-progress"]) == 2
    assert "--index" in capsys.readouterr().err


def test_cli_uncertainty_errors_name_the_path(tmp_path, capsys):
    assert cli.main(["uncertainty", "--checkpoint", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "nothing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["uncertainty", "--checkpoint", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "best.pt" in capsys.readouterr().err
