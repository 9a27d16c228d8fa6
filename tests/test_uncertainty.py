"""The sigma report: AUC and bootstrap interval against brute force, baselines, label files, the command."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ralbook import cli
from ralbook.errors import DataError
from ralbook.studies.uncertainty import Labels, bootstrap_auc_interval, item_scalars, read_labels, report, softmax_entropy, top_margin, write_labels

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def pairwise_auc(pos, neg) -> float:
    """Brute force: count every (positive, negative) pair, ties as one half."""
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("seed", range(3))
def test_bootstrap_interval_equals_an_explicit_loop_of_pair_counts(seed):
    rng = np.random.default_rng(100 + seed)
    pos = rng.integers(0, 6, 23).astype(float)      # few distinct values: many ties
    neg = rng.integers(0, 5, 31).astype(float)
    n_boot = 200
    draws = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        p = pos[draws.integers(0, pos.size, pos.size)]
        n = neg[draws.integers(0, neg.size, neg.size)]
        values.append(pairwise_auc(p, n))
    want = (np.percentile(values, 2.5), np.percentile(values, 97.5))
    got = bootstrap_auc_interval(pos, neg, n_boot=n_boot, seed=seed)
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] <= pairwise_auc(pos, neg) <= got[1]


def test_bootstrap_interval_properties():
    rng = np.random.default_rng(0)
    assert bootstrap_auc_interval(rng.normal(5, 1, 30), rng.normal(0, 1, 30), 300) == (1.0, 1.0)
    small = bootstrap_auc_interval(rng.normal(0.3, 1, 40), rng.normal(0, 1, 40), 500, seed=1)
    large = bootstrap_auc_interval(rng.normal(0.3, 1, 4000), rng.normal(0, 1, 4000), 500, seed=1)
    assert large[1] - large[0] < (small[1] - small[0]) / 4   # width shrinks like 1/sqrt(n)
    assert bootstrap_auc_interval([1.0, 2.0], [0.0], 50, seed=3) == bootstrap_auc_interval([1.0, 2.0], [0.0], 50, seed=3)


def test_entropy_and_margin_by_hand():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.2, 0.2], [0.5, 0.7, 0.1]])
    assert top_margin(scores) == pytest.approx([0.6, 0.0, 0.2])
    for t in (1.0, 0.1):
        for row, h in zip(scores, softmax_entropy(scores, t)):
            p = np.exp(row / t) / np.exp(row / t).sum()
            assert h == pytest.approx(-(p * np.log(p)).sum())
    assert softmax_entropy(scores[1:2], 0.05)[0] == pytest.approx(np.log(3))
    assert np.isfinite(softmax_entropy(np.array([[1e4, -1e4]]), 1e-3)).all()


def fake_outputs():
    """Two videos: v0 with captions a, b; v1 with caption c. Scores captions x videos (a, b, c) x (v0, v1)."""
    dist = SimpleNamespace(
        cap_ids=["a", "b", "c"], video_ids=["v0", "v1"], query_video=np.array([0, 0, 1]),
        query_length=np.array([4, 8, 6]),
        query_log_sigma=torch.tensor([[0.0, 0.2], [1.0, 1.0], [-1.0, 0.0]]),
        support_log_sigma=torch.tensor([[0.5, 0.5], [-0.5, -0.5]]),
        video_log_sigma=torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    scores = np.array([[0.9, 0.1], [0.4, 0.5], [0.2, 0.8]])
    return dist, scores


def test_item_scalars_per_level():
    dist, scores = fake_outputs()
    # scores given in another caption order: rows must follow the caption ids, not positions
    cap = item_scalars("caption", dist, scores[[2, 0, 1]], ["c", "a", "b"], ["v0", "v1"])
    assert cap.ids == ["a", "b", "c"] and cap.sigma == pytest.approx([0.1, 1.0, -0.5])
    assert cap.baselines["length"] == pytest.approx([4, 8, 6])
    assert cap.baselines["neg_margin"] == pytest.approx([-0.8, -0.1, -0.6])
    sup = item_scalars("support_set", dist, scores, ["a", "b", "c"], ["v0", "v1"])
    assert sup.ids == ["v0", "v1"] and sup.sigma == pytest.approx([0.5, -0.5])
    assert sup.baselines["length"] == pytest.approx([6, 6])
    assert sup.baselines["neg_margin"] == pytest.approx([-0.45, -0.6])
    vid = item_scalars("video", dist, scores, ["a", "b", "c"], ["v1", "v0"], n_frames=[30, 40])
    assert vid.sigma == pytest.approx([1.0, 0.0]) and vid.baselines["length"] == pytest.approx([30, 40])
    # score columns are (v1, v0) here: v0 scores (.1 .5 .8), v1 scores (.9 .4 .2)
    assert vid.baselines["neg_margin"] == pytest.approx([-0.3, -0.5])


def test_report_keys_and_values_against_brute_force():
    rng = np.random.default_rng(5)
    n = 60
    dist = SimpleNamespace(cap_ids=[f"c{i}" for i in range(n)], video_ids=["v"], query_video=np.zeros(n, int),
                           query_length=rng.integers(3, 12, n), query_log_sigma=torch.randn(n, 4),
                           support_log_sigma=torch.zeros(1, 4), video_log_sigma=torch.zeros(1, 4))
    scores = rng.normal(size=(n, 7))
    items = item_scalars("caption", dist, scores, dist.cap_ids, [f"v{j}" for j in range(7)])
    labels = Labels("caption", dist.cap_ids[::-1], (np.arange(n) % 3 == 0).astype(int)[::-1], "x.tsv")
    out = report(items, labels, n_boot=100, seed=0)
    assert set(out) == {"auc", "auc_ci", "n_pos", "n_neg", "baselines", "level", "comparisons"}
    assert out["level"] == "caption" and (out["n_pos"], out["n_neg"]) == (20, 40)
    lab = dict(zip(labels.ids, labels.values))
    is_pos = np.array([lab[c] == 1 for c in dist.cap_ids])
    sigma = dist.query_log_sigma.double().numpy().mean(axis=1)
    assert out["auc"] == pytest.approx(pairwise_auc(sigma[is_pos], sigma[~is_pos]))
    assert out["auc_ci"][0] <= out["auc"] <= out["auc_ci"][1]
    length = dist.query_length.astype(float)
    assert out["baselines"]["length"] == pytest.approx(pairwise_auc(length[is_pos], length[~is_pos]))
    assert set(out["baselines"]) == {"length", "neg_margin", "entropy"}
    # the paired comparison: sigma's AUC minus the baseline's in its informative direction
    for name, c in out["comparisons"].items():
        base = out["baselines"][name]
        assert c["value_b"] == pytest.approx(max(base, 1 - base)) and c["flipped_b"] == (base < 0.5)
        assert c["estimate"] == pytest.approx(out["auc"] - c["value_b"]) and c["n"] == n and c["unit"] == "captions"
    json.dumps(out)
    with pytest.raises(DataError, match="needs video labels"):
        report(item_scalars("support_set", dist, scores, dist.cap_ids, [f"v{j}" for j in range(7)]), labels)


# ----------------------------------------------------------------------------- label files

CAPS = {"v1#enc#0", "v1#enc#1", "v2#enc#0"}
VIDS = {"v1", "v2"}


def test_label_file_round_trip_and_video_labels(tmp_path):
    path = write_labels(tmp_path / "l.tsv", {"v1#enc#0": 1, "v2#enc#0": 0})
    labels = read_labels(path, CAPS, VIDS)
    assert labels.kind == "caption" and labels.ids == ["v1#enc#0", "v2#enc#0"] and labels.values.tolist() == [1, 0]
    (tmp_path / "v.tsv").write_text("# comment\nv1\t0\n\nv2\t1\n")
    videos = read_labels(tmp_path / "v.tsv", CAPS, VIDS)
    assert videos.kind == "video" and (videos.n_pos, videos.n_neg) == (1, 1)


@pytest.mark.parametrize("text, line, fragment", [
    ("v1#enc#0\t1\nv9#enc#0\t0\n", 2, "neither a caption id nor a video id"),
    ("v1#enc#0\t1\nv2#enc#0\tyes\n", 2, "must be 0 or 1, got 'yes'"),
    ("v1#enc#0\t1\nv2#enc#0\t2\n", 2, "must be 0 or 1"),
    ("v1#enc#0 1\n", 1, "expected 'ID<TAB>LABEL'"),
    ("v1#enc#0\t1\t0\n", 1, "expected 'ID<TAB>LABEL'"),
    ("v1#enc#0\t1\nv2\t0\n", 2, "is a video id but line 1 holds a caption id"),
    ("v1#enc#0\t1\nv2#enc#0\t0\nv1#enc#0\t0\n", 3, "already labelled on line 1"),
])
def test_label_file_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "labels.tsv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_labels(path, CAPS, VIDS, "test")
    message = str(err.value)
    assert str(path) in message and f"line {line}:" in message and fragment in message
    assert "\n" not in message


def test_label_file_without_both_classes_or_lines(tmp_path):
    (tmp_path / "one.tsv").write_text("v1\t1\nv2\t1\n")
    with pytest.raises(DataError, match="needs both labels 0 and 1"):
        read_labels(tmp_path / "one.tsv", CAPS, VIDS)
    (tmp_path / "empty.tsv").write_text("# nothing\n")
    with pytest.raises(DataError, match="no labels"):
        read_labels(tmp_path / "empty.tsv", CAPS, VIDS)
    with pytest.raises(DataError, match="does not exist"):
        read_labels(tmp_path / "missing.tsv", CAPS, VIDS)


def test_long_ids_are_cut_in_messages(tmp_path):
    (tmp_path / "l.tsv").write_text("x" * 500 + "\t1\n")
    with pytest.raises(DataError) as err:
        read_labels(tmp_path / "l.tsv", CAPS, VIDS)
    assert len(str(err.value)) < 250


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ralbook.config import preset
    from ralbook.data.demo import generate_demo
    from ralbook.training.rundir import BEST_FILE
    from ralbook.training.trainer import train

    root = tmp_path_factory.mktemp("sigma_data")
    dims = {"visual_dim": 24, "text_dim": 16}
    generate_demo(root, n_train=24, n_val=6, n_test=12, latent_dim=8, **dims)
    cfg = preset("demo", data={"data_root": str(root), **dims}, model={"hidden_size": 16, "n_heads": 2},
                 train={"n_epoch": 1, "batch_size": 8, "patience": 100, "eval_query_chunk": 64,
                        "eval_video_chunk": 16})
    run_dir = tmp_path_factory.mktemp("sigma_run") / "run"
    train(cfg, run_dir, progress=False)
    return root, run_dir / BEST_FILE


def test_cli_sigma_report_matches_a_direct_computation(trained, tmp_path, capsys):
    from ralbook.studies.analysis import collect_distributions
    from ralbook.data.collection import Collection
    from ralbook.data.demo import load_ground_truth
    from ralbook.checkpoint import model_from_checkpoint

    root, ckpt = trained
    truth = load_ground_truth(root, "demo")
    labels = {c: t.ambiguity for c, t in truth.captions.items() if t.split == "test"}
    assert 0 < sum(labels.values()) < len(labels)
    write_labels(tmp_path / "amb.tsv", labels)
    out = tmp_path / "r.json"
    assert cli.main(["sigma-report", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "amb.tsv"),
                     "--json", str(out), "--n-boot", "50", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "sigma" in printed and "entropy" in printed
    got = json.loads(out.read_text())
    assert set(got) == {"auc", "auc_ci", "n_pos", "n_neg", "baselines", "level", "comparisons", "provenance"}
    assert got["level"] == "caption" and set(got["comparisons"]) == set(got["baselines"])
    assert "sigma - score" in printed and "95% interval (paired)" in printed
    # what made the report: the checkpoint and label file with their hashes, split, bootstrap size and seed
    prov = got["provenance"]
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert prov["labels"]["sha256"] == hashlib.sha256((tmp_path / "amb.tsv").read_bytes()).hexdigest()
    assert (prov["split"], prov["n_boot"], prov["seed"]) == ("test", 50, 0)
    # independently: the sigma heads on the test split, brute-force AUC
    cfg, model, _ = model_from_checkpoint(ckpt)
    coll = Collection.from_config(cfg.data)
    dist = collect_distributions(model, coll, coll.videos("test"), "test", progress=False)
    sigma = dist.query_log_sigma.double().numpy().mean(axis=1)
    pos = np.array([labels[c] == 1 for c in dist.cap_ids])
    assert got["auc"] == pytest.approx(pairwise_auc(sigma[pos], sigma[~pos]), abs=1e-9)
    assert (got["n_pos"], got["n_neg"]) == (int(pos.sum()), int((~pos).sum()))


def test_cli_sigma_report_errors_are_one_line(trained, tmp_path, capsys):
    root, ckpt = trained
    (tmp_path / "bad.tsv").write_text("v9999#enc#0\t1\n")
    assert cli.main(["sigma-report", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "bad.tsv"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.tsv line 1" in err[0] and "v9999#enc#0" in err[0]
    vids = Path(root) / "demo" / "TextData" / "demotest.caption.txt"
    first = vids.read_text().split()[0].split("#")[0]
    (tmp_path / "v.tsv").write_text(f"{first}\t1\n")
    assert cli.main(["sigma-report", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "v.tsv"),
                     "--level", "caption", "--no-progress"]) == 2
    assert "needs both labels" in capsys.readouterr().err


def comparison(estimate: float, low: float, high: float, value_b: float, name: str = "entropy",
               flipped: bool = False, n: int = 400) -> dict:
    """A constructed paired AUC comparison sigma - baseline (as report() stores it)."""
    from ralbook import stats

    se = (high - low) / (2 * 1.96)
    return stats.Comparison("sigma", name, "AUC", "captions", n, estimate, low, high, 0.95, "constructed", se,
                            stats.detectable_difference(se), value_b + estimate, value_b, flipped_b=flipped).to_dict()


def constructed_report(auc: float, ci: tuple[float, float], **comparisons: dict) -> dict:
    return {"level": "caption", "auc": auc, "auc_ci": list(ci), "n_pos": 3, "n_neg": 4,
            "baselines": {k: (1 - c["value_b"] if c["flipped_b"] else c["value_b"]) for k, c in comparisons.items()},
            "comparisons": comparisons}


def test_interpretation_follows_the_paired_intervals():
    from ralbook.studies.uncertainty import interpret

    # sigma 0.01 ahead of entropy with a wide paired interval: not distinguishable, never "better"
    tiny = constructed_report(0.68, (0.64, 0.72), entropy=comparison(0.01, -0.08, 0.10, 0.67))
    line = interpret({"a": tiny}, probe=0.957)[1]
    assert "The strongest sigma-free baseline is entropy (AUC 0.670)" in line
    assert "sigma and entropy cannot be told apart on AUC at this size" in line and "better" not in line
    assert "captions would resolve a difference of this size" in line
    # sigma behind the strongest baseline with an interval below 0: said so, with the paired interval
    behind = constructed_report(0.68, (0.64, 0.72), entropy=comparison(-0.06, -0.10, -0.02, 0.74),
                                length=comparison(0.10, 0.05, 0.15, 0.58, "length", flipped=True))
    line = interpret({"a": behind})[0]
    assert "strongest sigma-free baseline is entropy (AUC 0.740): sigma is worse than entropy on AUC by 0.060" in line
    assert "95% CI 0.020 to 0.100, paired over 400 captions" in line
    assert "Against length, read the other way round (AUC 0.580; as scored 0.420): sigma is better than length" in line
    assert "beats" not in line and "of 2" not in line
    # undecided but behind on the point estimate: the text says sigma's AUC is the lower one
    lower = constructed_report(0.6, (0.55, 0.65), entropy=comparison(-0.02, -0.07, 0.03, 0.62))
    assert "sigma's AUC is the lower of the two, by 0.020" in interpret({"a": lower})[0]
    # the sigma interval against 0.5 still decides the first clause
    below = constructed_report(0.3, (0.25, 0.35), length=comparison(-0.25, -0.3, -0.2, 0.55, "length"))
    assert "opposite of the claim" in interpret({"c": below})[0]
    # a report written without paired comparisons draws no verdict
    old = {"level": "caption", "auc": 0.6, "auc_ci": [0.55, 0.65], "n_pos": 3, "n_neg": 4, "baselines": {"length": 0.4}}
    assert "no verdict is drawn" in interpret({"x": old})[0]


def scalar_items(sigma: np.ndarray, **baselines: np.ndarray):
    from ralbook.studies.uncertainty import ItemScalars

    return ItemScalars("caption", [f"c{i}" for i in range(sigma.size)], sigma, baselines)


def test_report_compares_on_the_same_items_and_swapping_swaps_the_words():
    from ralbook.studies.uncertainty import Labels, interpret

    rng = np.random.default_rng(7)
    y = np.repeat([1, 0], [150, 250])
    strong, weak = rng.normal(0, 1, 400) + 1.2 * y, rng.normal(0, 1, 400) + 0.5 * y
    labels = Labels("caption", [f"c{i}" for i in range(400)], y, "constructed.tsv")
    ahead = report(scalar_items(strong, entropy=weak), labels, n_boot=400)
    swapped = report(scalar_items(weak, entropy=strong), labels, n_boot=400)
    a, b = ahead["comparisons"]["entropy"], swapped["comparisons"]["entropy"]
    assert a["verdict"] == "better" and b["verdict"] == "worse"
    assert a["estimate"] == pytest.approx(-b["estimate"])
    assert a["estimate"] == pytest.approx(pairwise_auc(strong[y == 1], strong[y == 0])
                                          - pairwise_auc(weak[y == 1], weak[y == 0]))
    assert "sigma is better than entropy on AUC" in interpret({"x": ahead})[0]
    assert "sigma is worse than entropy on AUC" in interpret({"x": swapped})[0]


def test_a_baseline_below_half_is_compared_read_the_other_way_round():
    from ralbook.studies.uncertainty import Labels, format_report, interpret

    rng = np.random.default_rng(3)
    y = np.repeat([1, 0], [120, 200])
    sigma = rng.normal(0, 1, 320) + 0.8 * y
    length = rng.normal(0, 1, 320) - 0.5 * y   # label-1 items are shorter: AUC below 0.5
    labels = Labels("caption", [f"c{i}" for i in range(320)], y, "constructed.tsv")
    r = report(scalar_items(sigma, length=length), labels, n_boot=300)
    raw = pairwise_auc(length[y == 1], length[y == 0])
    c = r["comparisons"]["length"]
    assert raw < 0.5 and r["baselines"]["length"] == pytest.approx(raw)
    assert c["flipped_b"] and c["value_b"] == pytest.approx(1 - raw)
    assert c["estimate"] == pytest.approx(r["auc"] - (1 - raw))
    assert f"length, read the other way round (AUC {1 - raw:.3f}; as scored {raw:.3f})" in interpret({"x": r})[0]
    table = format_report(r)
    assert f"{1 - raw:.3f}*" in table and "read the other way round" in table and f"{c['estimate']:+.3f}" in table


def test_subset_labels_keeps_both_classes_or_gives_none():
    from ralbook.studies.uncertainty import subset_labels

    labels = Labels("caption", ["a", "b", "c"], np.array([1, 0, 1]), "x.tsv")
    kept = subset_labels(labels, {"a", "b"})
    assert kept.ids == ["a", "b"] and kept.values.tolist() == [1, 0]
    assert subset_labels(labels, {"a", "c"}) is None
