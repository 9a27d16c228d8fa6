"""Runs compared (``ralbook compare``, ``train --seeds``) and the provenance every result records.

Tiny runs train on a random collection written by tests/layout.py (a second or two each); the seed-group
statistics are checked on constructed ranks against closed forms (t interval from scipy).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

from layout import write_random_collection
from ralbook import cli
from ralbook.errors import DataError, RalbookError
from ralbook.retrieval.evaluate import SCORE_KINDS, evaluate
from ralbook.retrieval.metrics import recall_metrics
from ralbook.runtime.provenance import file_sha256, git_state, result_provenance
from ralbook.stats import describe
from ralbook.studies.compare import (METRICS, RunRanks, compare_ranks, compare_runs, format_comparison, seed_summary,
                                     to_csv, to_latex)
from ralbook.training.rundir import BEST_FILE, CONFIG_FILE, open_run

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
DATA = {"collection": "tiny", "feature": "feat", "visual_dim": 8, "text_dim": 6}
SMALL = ["--set", "model.hidden_size=16", "--set", "model.n_heads=2", "--set", "train.patience=100",
         "--set", "train.eval_video_chunk=16", "--set", f"data.collection={DATA['collection']}",
         "--set", f"data.feature={DATA['feature']}", "--set", f"data.visual_dim={DATA['visual_dim']}",
         "--set", f"data.text_dim={DATA['text_dim']}"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare_data")
    write_random_collection(root, n_videos=(12, 4, 16))
    return root


@pytest.fixture(scope="module")
def sweep(data_root, tmp_path_factory):
    """``train --seeds 1,2`` through the command line: OUT/seed_1, OUT/seed_2 and OUT/seeds.json."""
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    args = ["train", "--preset", "demo", "--data-root", str(data_root), "--epochs", "1", "--batch-size", "4",
            "--out", str(out), "--no-progress", "--seeds", "1,2", *SMALL]
    assert cli.main(args) == 0
    return out


def test_parse_seeds_accepts_commas_and_spaces():
    from ralbook.cli.train import parse_seeds

    assert parse_seeds(["1,2,3"]) == parse_seeds(["1", "2", "3"]) == parse_seeds(["1,2", "3"]) == [1, 2, 3]
    assert parse_seeds(None) == []
    for bad in (["1,x"], ["1,1"], ["-1"], [","]):
        with pytest.raises(RalbookError, match="--seeds"):
            parse_seeds(bad)


def test_train_seeds_makes_one_run_per_seed_and_a_summary(sweep, capsys):
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["seed_1", "seed_2"]
    for n in (1, 2):
        saved = json.loads((sweep / f"seed_{n}" / CONFIG_FILE).read_text())
        assert saved["train"]["seed"] == n and (sweep / f"seed_{n}" / BEST_FILE).is_file()
    summary = json.loads((sweep / "seeds.json").read_text())
    (group,) = summary["seed_groups"]  # the two runs differ only by seed: one group
    assert group["seeds"] == [1, 2]
    values = [summary["runs"][i]["metrics"]["fused"]["SumR"] for i in (0, 1)]
    assert group["estimates"]["fused"]["SumR"]["value"] == pytest.approx(np.mean(values))
    assert summary["provenance"]["split"] == "test" and summary["provenance"]["environment"]["ralbook"]


def test_side_by_side_numbers_equal_each_runs_own_evaluation(sweep):
    dirs = [sweep / "seed_1", sweep / "seed_2"]
    stored = compare_runs(dirs, n_boot=200)
    evaluated = compare_runs(dirs, n_boot=200, reuse=False)
    assert [r.source for r in stored.runs] != [r.source for r in evaluated.runs]
    for run_dir, s, e in zip(dirs, stored.runs, evaluated.runs):
        cfg, model, coll = open_run(run_dir, device="cpu")
        own = evaluate(model, coll, "test", cfg, progress=False)
        for kind in SCORE_KINDS:
            np.testing.assert_array_equal(s.ranks[kind], own.ranks[kind])
            np.testing.assert_array_equal(e.ranks[kind], own.ranks[kind])
            assert recall_metrics(s.ranks[kind]) == pytest.approx(own.metrics[kind])
    # the paired difference is the difference of the two runs' own metrics
    c = stored.difference("seed_2", "fused", "SumR")
    assert c.estimate == pytest.approx(stored.runs[1].metrics["fused"]["SumR"] - stored.runs[0].metrics["fused"]["SumR"])


def test_a_run_against_itself_differs_by_exactly_zero(sweep, tmp_path):
    copy = tmp_path / "copy_of_seed_1"
    shutil.copytree(sweep / "seed_1", copy)
    comp = compare_runs([sweep / "seed_1", copy], n_boot=200)
    for c in comp.differences:
        assert (c.estimate, c.low, c.high) == (0.0, 0.0, 0.0) and c.verdict == "undecided"
    assert "cannot be told apart" in describe(comp.difference("copy_of_seed_1"))
    assert "cannot be told apart" in format_comparison(comp)


def test_runs_on_another_collection_or_split_are_refused(sweep, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sweep / "seed_1", other)
    saved = json.loads((other / CONFIG_FILE).read_text())
    saved["data"]["feature"] = "another_feature"
    (other / CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(DataError, match="collection"):
        compare_runs([sweep / "seed_1", other], n_boot=50)
    a = fake_run("a", 1, np.arange(1, 11))
    b = fake_run("b", 2, np.arange(1, 11))
    b.split = "val"
    with pytest.raises(DataError, match="split"):
        compare_ranks([a, b])
    c = fake_run("c", 2, np.arange(1, 11))
    c.cap_ids = c.cap_ids[::-1]
    with pytest.raises(DataError, match="different queries"):
        compare_ranks([a, c])
    assert cli.main(["compare", str(sweep / "seed_1"), str(other), "--no-progress"]) == 2


def test_cli_compare_writes_csv_latex_and_json(sweep, tmp_path, capsys):
    files = {k: tmp_path / f"cmp.{k}" for k in ("csv", "tex", "json")}
    assert cli.main(["compare", str(sweep / "seed_1"), str(sweep / "seed_2"), "--n-boot", "100",
                     "--csv", str(files["csv"]), "--latex", str(files["tex"]), "--json", str(files["json"])]) == 0
    printed = capsys.readouterr().out
    assert "seed_2" in printed and "What this shows" in printed
    comp = compare_runs([sweep / "seed_1", sweep / "seed_2"], n_boot=100)
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert [r["run"] for r in rows] == ["seed_1", "seed_2"]
    for row, run in zip(rows, comp.runs):
        for kind in SCORE_KINDS:
            for metric in METRICS:
                assert float(row[f"{kind} {metric}"]) == pytest.approx(run.metrics[kind][metric], abs=1e-4)
    diff = comp.difference("seed_2")
    assert float(rows[1]["fused SumR - first"]) == pytest.approx(diff.estimate, abs=1e-4)
    assert float(rows[1]["low"]) == pytest.approx(diff.low, abs=1e-4) and rows[0]["low"] == ""
    tex = files["tex"].read_text()
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1 and r"seed\_2" in tex
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len({line.count("&") for line in body}) == 1  # every row has the header's columns
    assert f"{comp.runs[1].metrics['fused']['SumR']:.1f}" in tex
    saved = json.loads(files["json"].read_text())
    assert saved["provenance"]["n_boot"] == 100 and len(saved["differences"]) == len(SCORE_KINDS) * len(METRICS)
    assert saved["provenance"]["checkpoints"][1]["sha256"] == file_sha256(sweep / "seed_2" / BEST_FILE)


# ----------------------------------------------------------------------------- constructed ranks


def fake_run(name: str, seed: int, ranks: np.ndarray, hidden: int = 16, parent: str = "sweep") -> RunRanks:
    ranks = np.asarray(ranks, dtype=np.int64)
    config = {"data": {"collection": "tiny", "feature": "feat", "data_root": f"/somewhere/{name}"},
              "model": {"hidden_size": hidden}, "train": {"seed": seed}}
    return RunRanks(name, Path(parent) / name, config, "test", [f"q{i}" for i in range(ranks.size)], 200,
                    {k: ranks for k in SCORE_KINDS}, {k: recall_metrics(ranks) for k in SCORE_KINDS}, "constructed")


def seeded_ranks(seed: int, n: int = 300, scale: float = 20.0) -> np.ndarray:
    return 1 + np.random.default_rng(seed).geometric(1.0 / scale, size=n).clip(0, 199)


def test_seeds_are_grouped_with_a_t_interval_and_groups_compared_paired():
    runs = [fake_run(f"small_{s}", s, seeded_ranks(s), 16, "small") for s in (1, 2, 3)]
    runs += [fake_run(f"large_{s}", s, seeded_ranks(10 + s, scale=10.0), 32, "large") for s in (1, 2, 3)]
    comp = compare_ranks(runs, n_boot=100)
    assert [g.runs for g in comp.groups] == [["small_1", "small_2", "small_3"], ["large_1", "large_2", "large_3"]]
    values = [recall_metrics(r.ranks["fused"])["SumR"] for r in runs[:3]]
    est = comp.groups[0].estimates["fused"]["SumR"]
    half = sps.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert est.value == pytest.approx(np.mean(values)) and est.low == pytest.approx(np.mean(values) - half)
    g = next(c for c in comp.group_differences if c.metric == "fused SumR")
    assert g.paired and "paired t" in g.method  # the same seeds ran in both groups
    others = [recall_metrics(r.ranks["fused"])["SumR"] for r in runs[3:]]
    assert g.estimate == pytest.approx(np.mean(others) - np.mean(values))
    assert "over seeds" in seed_summary(comp)
    # other seeds in the second group: Welch
    runs[5] = fake_run("large_9", 9, seeded_ranks(19, scale=10.0), 32, "large")
    welch = next(c for c in compare_ranks(runs, n_boot=50).group_differences if c.metric == "fused SumR")
    assert not welch.paired and "Welch" in welch.method


def test_a_tiny_difference_never_reads_as_a_win_and_swapping_swaps_the_words():
    base = seeded_ranks(5, n=400)
    tweaked = base.copy()
    tweaked[0] = 1 if base[0] != 1 else 2  # one query of 400 moves
    comp = compare_ranks([fake_run("a", 1, base), fake_run("b", 1, tweaked)], n_boot=500)
    assert comp.difference("b").verdict == "undecided"
    good = np.minimum(base, 3)  # a much better ranking of the same queries
    forward = compare_ranks([fake_run("base", 1, base), fake_run("good", 1, good)], n_boot=500).difference("good")
    backward = compare_ranks([fake_run("good", 1, good), fake_run("base", 1, base)], n_boot=500).difference("base")
    assert forward.verdict == "better" and backward.verdict == "worse"
    assert "good is better than base" in describe(forward) and "base is worse than good" in describe(backward)


def test_latex_escapes_names_and_reports_seed_groups():
    runs = [fake_run(f"r_{s}", s, seeded_ranks(s)) for s in (1, 2)]
    runs[0].name = "r_1 & 50%"
    tex = to_latex(compare_ranks(runs, n_boot=50))
    assert r"r\_1 \& 50\%" in tex and r"$\pm$" in tex and "(2 seeds)" in tex
    rows = list(csv.reader(io.StringIO(to_csv(compare_ranks(runs, n_boot=50)))))
    assert len(rows) == 3 and rows[1][0] == "r_1 & 50%"


# ----------------------------------------------------------------------------- provenance


PROVENANCE_KEYS = {"cpu_model", "threads", "torch", "python", "ralbook", "precision", "git_commit", "git_dirty",
                   "command", "overrides", "started", "finished"}


def test_a_run_records_what_made_it(sweep):
    env = json.loads((sweep / "seed_1" / CONFIG_FILE).read_text())["environment"]
    assert PROVENANCE_KEYS <= set(env)
    assert env["command"].startswith("python -m ralbook train") and "--seeds 1,2" in env["command"]
    assert "model.hidden_size=16" in env["overrides"] and env["started"] <= env["finished"]


def test_git_is_optional(tmp_path):
    assert git_state(str(tmp_path)) == {"git_commit": None, "git_dirty": None}


def test_threads_change_the_run_record(data_root, tmp_path, monkeypatch):
    """Same command but --threads: the config.json records differ (the threads actually used)."""
    monkeypatch.setenv("RALBOOK_THREADS", "1")
    before = torch.get_num_threads()
    envs = {}
    try:
        for n in (2, 1):
            out = tmp_path / f"t{n}"
            assert cli.main(["train", "--preset", "demo", "--data-root", str(data_root), "--epochs", "1",
                             "--batch-size", "4", "--out", str(out), "--no-progress", "--threads", str(n),
                             *SMALL]) == 0
            envs[n] = json.loads((out / CONFIG_FILE).read_text())["environment"]
    finally:
        torch.set_num_threads(before)
    assert (envs[2]["threads"], envs[1]["threads"]) == (2, 1)


def test_result_provenance_hashes_the_checkpoint_and_the_labels(sweep, tmp_path):
    labels = tmp_path / "labels.tsv"
    labels.write_text("q0\t1\n")
    ckpt = sweep / "seed_1" / BEST_FILE
    record = result_provenance(checkpoint=ckpt, split="test", labels=labels, n_boot=300, seed=4)
    assert record["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert record["labels"]["sha256"] == hashlib.sha256(b"q0\t1\n").hexdigest()
    assert (record["split"], record["n_boot"], record["seed"], record["relevant"]) == ("test", 300, 4, None)
    assert {"ralbook", "git_commit", "torch", "threads"} <= set(record["environment"])


def test_index_manifest_records_the_checkpoint(sweep, tmp_path):
    ckpt = sweep / "seed_1" / BEST_FILE
    assert cli.main(["index", "--checkpoint", str(ckpt), "--out", str(tmp_path / "idx"), "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    prov = manifest["provenance"]
    assert prov["checkpoint"]["sha256"] == file_sha256(ckpt) and prov["split"] == "test"
    assert prov["command"].startswith("python -m ralbook index")
