"""The notebooks, executed headlessly with papermill on a small generated demo collection.

Each test checks what a notebook produced (run directory files, figure files, the numbers it
recorded in its ``summary_path`` JSON), comparing with values computed here independently where
that is cheap. One small model is trained once (by notebook 02) and shared by 00, 03, 04 and 05.

Data: ``generate_demo`` with the shipped generator and its default difficulty, only fewer videos
(so that a model trains in about a minute on two CPU cores). Run with ``-m "not slow"`` to skip.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest

from ralbook.workbook import pipeline

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
# Small model settings shared by every training in this file (the demo preset otherwise).
DEMO_SIZES = {"n_train": 300, "n_val": 50, "n_test": 100}
TINY = {"hidden_size": 32}
TINY_OVERRIDES = {"train.lr": 1e-3}
# 5, not 3: with the generator's noisy generic words (version 2), word confidence needs more steps to prefer
# content words; this run's filler AUC measured 0.51 after 3 epochs, 0.74 after 5 (full demo training: 0.975).
TRAIN_EPOCHS = 5


# ----------------------------------------------------------------------------- stored notebooks (fast)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_first_and_documented(path):
    import papermill as pm

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], f"{path.name}: the first code cell must be the only parameters cell"
    params = pm.inspect_notebook(str(path))
    # every assignment of the cell is a parameter papermill understands, each with a help comment
    assignments = [line for line in tagged[0].source.splitlines() if line and not line.startswith((" ", "#", "}"))]
    assert len(params) == len(assignments), f"{path.name}: papermill parsed {sorted(params)} from {assignments}"
    undocumented = [name for name, p in params.items() if not p["help"]]
    assert not undocumented, f"{path.name}: parameters without a comment: {undocumented}"
    assert "figures_dir" in params and "summary_path" in params
    if path.name[:2] in {"01", "03", "04", "05"}:
        assert params["interactive"]["default"] == "False"


@pytest.mark.parametrize("name", ["02_train", "04_uncertainty"])
def test_parameters_are_typed_and_default_to_the_demo_run(name):
    """papermill --help-notebook names each type (no "None"), and run_dir is the run `make demo` trains."""
    import papermill as pm

    params = pm.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))
    untyped = [k for k, v in params.items() if v["inferred_type_name"] in ("None", "", None)]
    assert not untyped, f"{name}: parameters without a type annotation: {untyped}"
    makefile = (NOTEBOOK_DIR.parent / "Makefile").read_text()
    assert "demo --out outputs/demo" in makefile
    assert params["run_dir"]["default"] == f'"outputs/demo/{pipeline.DEMO_RUN_NAME}"'
    assert params["progress"]["default"] == "False"


def test_strip_notebook_removes_outputs(tmp_path):
    src = NOTEBOOKS[0]
    nb = nbformat.read(src, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", text="hello")]
    code.execution_count = 3
    dirty = tmp_path / src.name
    nbformat.write(nb, dirty)
    assert pipeline.strip_notebook(dirty) is True
    assert pipeline.strip_notebook(dirty) is False
    assert nbformat.read(dirty, as_version=4) == nbformat.read(src, as_version=4)


def test_repo_root_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(NOTEBOOK_DIR)
    assert pipeline.repo_root() == REPO
    assert pipeline.resolve_path("data") == REPO / "data"
    assert pipeline.resolve_path(tmp_path) == tmp_path
    # outside any checkout: the editable install's checkout
    monkeypatch.chdir(tmp_path)
    assert pipeline.repo_root() == REPO


def test_override_strings_and_build_config():
    assert pipeline.override_strings({"model.msra": False, "train.lr": 1e-4}) == ["model.msra=false",
                                                                                   "train.lr=0.0001"]
    cfg = pipeline.build_config("demo", epochs=3, hidden_size=16, overrides={"model.msra": False})
    assert (cfg.train.n_epoch, cfg.model.hidden_size, cfg.model.msra) == (3, 16, False)
    assert Path(cfg.data.data_root).is_absolute()
    with pytest.raises(pipeline.RalbookError, match="bad override"):
        pipeline.build_config("demo", overrides=["nosuch.key=1"])


def test_summaries_round_trip(tmp_path):
    import math

    pipeline.write_summary(tmp_path / "03_evaluate_summary.json",
                           {"metrics": {"fused": {"SumR": np.float32(240.875)}}, "nan": math.nan, "path": tmp_path})
    back = pipeline.read_summary(tmp_path / "03_evaluate_summary.json")
    assert back == {"metrics": {"fused": {"SumR": 240.875}}, "nan": None, "path": str(tmp_path)}
    assert pipeline.write_summary("", {"a": 1}) is None


# ----------------------------------------------------------------------------- executed notebooks (slow)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from ralbook.data.demo import generate_demo

    root = tmp_path_factory.mktemp("data")
    generate_demo(root, **DEMO_SIZES)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """An even smaller collection for the tests that train their own model (fallback, sweep, main job)."""
    from ralbook.data.demo import generate_demo

    root = tmp_path_factory.mktemp("tiny_data")
    generate_demo(root, n_train=40, n_val=10, n_test=20)
    return root


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


# Notebooks whose saved outputs are checked for stray values (the others belong to other branches for now).
CLEAN_OUTPUTS = {"00_quickstart", "01_data_inspection", "02_train", "03_evaluate", "04_uncertainty",
                 "05_word_confidence", "06_ablation_sweep", "07_robustness", "08_uncertainty_methods"}
STRAY = ("<Figure size", "PosixPath(", "0%|")


def execute(name: str, out_dir: Path, **parameters) -> dict:
    """Run notebooks/<name>.ipynb into out_dir with figures under out_dir/figures; return its summary JSON."""
    summary = out_dir / f"{name}_summary.json"
    params = {"figures_dir": str(out_dir / "figures"), "summary_path": str(summary), **parameters}
    executed = pipeline.run_notebook(NOTEBOOK_DIR / f"{name}.ipynb", out_dir / f"{name}.ipynb", params)
    assert executed.is_file()
    if name in CLEAN_OUTPUTS:
        assert_clean_outputs(executed)
    return json.loads(summary.read_text())


def assert_clean_outputs(path: Path) -> None:
    """No figure reprs, paths or lists printed by accident, no frozen progress bars; ends with its conclusion."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.output_type == "stream" else out.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            if "image/png" in out.get("data", {}):
                continue  # an inline figure: its text/plain is the figure's repr, never shown
            assert not any(s in text for s in STRAY), f"{path.name}: stray output {text[:200]!r}"
            if out.output_type == "execute_result":
                assert not text.startswith("["), f"{path.name}: a list printed as a cell result: {text[:200]!r}"
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), f"{path.name}: a widget bar"
    last = nb.cells[-1].outputs
    assert any("What this shows" in "".join(o.get("data", {}).get("text/markdown", "")) for o in last), \
        f"{path.name}: the last cell does not display its conclusion"


def assert_figures(summary: dict, *whats: str) -> None:
    """Every named figure exists as a non-empty PNG and PDF, named <notebook>_<run>_<what>."""
    paths = [Path(p) for p in summary["figures"]]
    for what in whats:
        for ext in (".png", ".pdf"):
            hits = [p for p in paths if p.name.startswith(summary["notebook"]) and p.name.endswith(f"_{what}{ext}")]
            assert hits, f"no {what}{ext} among {[p.name for p in paths]}"
            assert hits[0].stat().st_size > 1000


@pytest.fixture(scope="module")
def trained(demo_root, out_dir) -> tuple[Path, dict]:
    run = out_dir / "run"
    summary = execute("02_train", out_dir, data_root=str(demo_root), run_dir=str(run), epochs=TRAIN_EPOCHS,
                      overrides=TINY_OVERRIDES, progress=False, **TINY)
    return run, summary


@pytest.mark.slow
def test_01_data_inspection(demo_root, out_dir):
    from ralbook.data.collection import Collection
    from ralbook.data.demo import load_ground_truth

    s = execute("01_data_inspection", out_dir, data_root=str(demo_root))
    coll = Collection(demo_root, "demo")
    for split in ("train", "val", "test"):
        assert s["splits"][split]["videos"] == len(coll.videos(split))
        assert s["splits"][split]["captions"] == len(coll.captions(split))
    assert s["has_ground_truth"] is True
    assert (s["visual_dim"], s["text_dim"]) == (coll.visual_dim, coll.text_dim)
    assert_figures(s, "counts", "distributions", "frame_generation", "moments")
    assert s["what_this_shows"].startswith("**What this shows**")
    # the ideal model's R@1 on the last split: the mean of 1 / (truthful videos) over its captions
    truth = load_ground_truth(demo_root, "demo")
    m = [truth.captions[c].n_consistent for c, _ in coll.captions("test")]
    assert s["ideal_r1"] == pytest.approx(float(np.mean([1.0 / k for k in m])), abs=1e-12) and max(m) > 1


@pytest.mark.slow
def test_02_train_leaves_a_run_directory(trained):
    from ralbook.training.rundir import read_metrics

    run, s = trained
    for name in ("config.json", "metrics.jsonl", "best.pt", "last.pt", "test_metrics.json"):
        assert (run / name).is_file(), name
    records = read_metrics(run)
    assert s["epochs"] == [r["epoch"] for r in records] == list(range(TRAIN_EPOCHS))
    assert s["val_sumr"] == pytest.approx([r["val"]["fused"]["SumR"] for r in records])
    assert set(s["loss_parts"]) == set(records[0]["loss"]) - {"total"}
    assert s["test"] == json.loads((run / "test_metrics.json").read_text())["metrics"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["hidden_size"] == TINY["hidden_size"] and config["train"]["lr"] == TINY_OVERRIDES["train.lr"]
    assert_figures(s, "curves", "msra_terms")
    assert f"from epoch {records[0]['epoch']}" not in s["what_this_shows"]  # generated, not a template
    # MSRA diagnostics from the run's own metrics: shares by hand, unweighted terms, the uniform-guess L_PM
    last = records[-1]["loss"]
    assert s["loss_shares"]["proxy_matching"][-1] == pytest.approx(last["proxy_matching"] / last["total"])
    assert s["msra_unweighted"]["proxy_matching"][-1] == pytest.approx(last["proxy_matching"] / config["loss"]["pm_weight"])
    b, k, n_train = config["train"]["batch_size"], config["model"]["n_proxies"], s["n_train_videos"]
    sizes = [b] * (n_train // b) + ([n_train % b] if n_train % b else [])
    assert s["msra_references"]["proxy_matching"] == pytest.approx(np.mean(np.log(np.array(sizes) * k)))
    nv = s["n_val_videos"]
    assert s["val_chance_sumr"] == pytest.approx(sum(100 * min(kk, nv) / nv for kk in (1, 5, 10, 100)))
    assert "not comparable" in s["what_this_shows"] and "uniform guess log(B·K)" in s["what_this_shows"]
    assert f"{records[-1]['lr']:.2e}" in s["what_this_shows"] and s["seconds_per_epoch"] > 0


@pytest.mark.slow
def test_03_evaluate_reports_metrics_and_compares_runs(trained, demo_root, out_dir):
    from ralbook.retrieval.evaluate import evaluate

    run, _ = trained
    missing = out_dir / "no_such_run"
    s = execute("03_evaluate", out_dir, run_dir=str(run), compare_runs=[str(missing), str(run)], n_examples=3)
    # the same numbers as evaluating the run here
    cfg, model, coll = pipeline.open_run(run, "cpu")
    ref = evaluate(model, coll, "test", cfg, progress=False)
    for kind in ("clip", "frame", "fused"):
        assert s["metrics"][kind] == pytest.approx(ref.metrics[kind])
    assert s["n_videos"] == len(coll.videos("test")) and s["n_queries"] == len(coll.captions("test"))
    # the trained model retrieves above chance: chance SumR = sum over K of 100 * min(K, Nv) / Nv (116 for
    # 100 videos). Test SumR minus chance of notebook 02's run, benchmarks/seed_spread.py --only notebooks,
    # seeds 9527, 1, 2, 3, 4 on a 2-core AMD EPYC (avx512_bf16, no AMX), one thread: 14.6, 21.3, 26.5, 33.7,
    # 34.6 (min 14.6); the bar chance + 5 is the smallest minus 9.6
    nv = s["n_videos"]
    chance = sum(100 * min(k, nv) / nv for k in (1, 5, 10, 100))
    assert s["metrics"]["fused"]["SumR"] > chance + 5
    # a missing run is skipped, the duplicate is kept under its full path
    assert list(s["comparison"]) == ["run", str(run)] and not missing.exists()
    assert s["comparison"]["run"] == pytest.approx(s["comparison"][str(run)])
    assert s["n_success_listed"] <= 3 and s["n_failure_listed"] <= 3
    assert_figures(s, "recall", "rank_hist", "comparison", "fusion_sweep")
    assert f"{s['metrics']['fused']['SumR']:.1f}" in s["what_this_shows"]
    # the sweep re-ranks alpha * clip + (1 - alpha) * frame: at the model's alpha it is the evaluated fused score
    at_model = [p for p in s["sweep"] if abs(p["alpha"] - s["alpha"]) < 1e-9]
    assert len(s["sweep"]) == 11 and at_model[0]["SumR"] == pytest.approx(s["metrics"]["fused"]["SumR"])
    assert at_model[0]["vs_model"]["estimate"] == 0.0
    assert sum(e["value"] for e in s["branch_shares"].values()) == pytest.approx(100.0)
    # multi-ground-truth: the ceiling by hand from the relevance file; no listed failure has a truthful top-1
    truthful = json.loads((demo_root / "demo" / "GroundTruth" / "relevant_test.json").read_text())
    counts = [len(set(truthful.get(c, [coll.video_of(c)])) | {coll.video_of(c)}) for c in ref.cap_ids]
    multi = s["multi_ground_truth"]
    assert multi["ideal"]["R@1"] == pytest.approx(100 * np.mean([1 / m for m in counts]))
    assert multi["truthful"]["R@1"] >= multi["standard"]["R@1"]
    top1 = dict(zip(ref.cap_ids, (row[0] for row in ref.topk_ids("fused"))))
    assert s["failures"] and all(top1[c] not in truthful.get(c, [coll.video_of(c)]) for c in s["failures"])
    n_truthful_other = sum(top1[c] != coll.video_of(c) and top1[c] in truthful.get(c, []) for c in ref.cap_ids)
    assert multi["n_truthful_not_annotated"] == n_truthful_other
    shares = s["frame_branch"]["places"]
    assert sum(e["value"] for e in shares.values()) == pytest.approx(100.0)
    # a single run draws no comparison chart
    alone = execute("03_evaluate", out_dir / "single", run_dir=str(run))
    assert not any("comparison" in Path(p).name for p in alone["figures"])
    assert "no comparison" in alone["what_this_shows"]


@pytest.mark.slow
def test_04_uncertainty(trained, out_dir):
    """Sigma per video / support set / caption, the sigma report with its baselines, and generated conclusions.

    No direction of the sigma-ambiguity relation is asserted (the numbers are what the notebook reports; the
    measured values are in the helper's report): the test checks that the notebook's AUC is the right number,
    recomputed here by another path (one forward pass per batch of captions, pairwise AUC by definition), that
    the sigma report's caption-level AUC is the same number, and that its interval and baselines are present.
    Threshold kept from before: training shrinks sigma (about 1 at initialisation), mean caption sigma < 0.9;
    measured 0.315, 0.333, 0.334, 0.334, 0.344 over seeds 9527, 1, 2, 3, 4 (benchmarks/seed_spread.py, 2-core
    AMD EPYC with avx512_bf16 and no AMX, one thread).
    """
    from ralbook.studies.analysis import query_sigmas, sigma_summary
    from ralbook.data.datasets import QueryDataset, collate_queries
    from ralbook.data.demo import load_ground_truth

    run, _ = trained
    s = execute("04_uncertainty", out_dir, run_dir=str(run), n_projection_videos=3, n_samples=10)
    cfg, model, coll = pipeline.open_run(run, "cpu")
    caps = [c for c, _ in coll.captions("test")]
    assert s["n_videos"] == len(coll.videos("test")) and s["n_captions"] == len(caps)
    assert s["sigma"]["videos"]["n"] == s["n_videos"] and s["sigma"]["single captions"]["n"] == len(caps)
    for group in s["sigma"].values():
        assert group["p05"] > 0 and np.isfinite(group["mean"])
    assert s["sigma"]["single captions"]["mean"] < 0.9
    # the ambiguity AUC, recomputed independently
    batch = collate_queries([QueryDataset(coll, caps)[i] for i in range(len(caps))])
    sigma = sigma_summary(query_sigmas(model, batch["query_feats"], batch["query_mask"]))
    truth = load_ground_truth(cfg.data.data_root, "demo")
    amb = np.array([truth.captions[c].ambiguity for c in caps]) == 1
    pairs = sigma[amb][:, None] - sigma[~amb][None, :]
    # ties (differences below float noise) count half
    expected = np.mean(np.where(np.abs(pairs) < 1e-6, 0.5, pairs > 0))
    assert s["ambiguity_auc"] == pytest.approx(expected, abs=2e-3)
    assert -1.0 <= s["length_spearman"] <= 1.0 and -1.0 <= s["support_ambiguity_spearman"] <= 1.0
    assert_figures(s, "sigma_hist", "sigma_vs_ambiguity", "sigma_vs_length", "projection")
    report = s["sigma_report"]["caption_ambiguous"]
    assert report["level"] == "caption" and report["auc"] == pytest.approx(expected, abs=2e-3)
    assert report["auc_ci"][0] <= report["auc"] <= report["auc_ci"][1]
    assert (report["n_pos"], report["n_neg"]) == (int(amb.sum()), int((~amb).sum()))
    assert set(report["baselines"]) == {"length", "neg_margin", "entropy"}
    assert {r["level"] for r in s["sigma_report"].values()} <= {"caption", "support_set", "video"}
    assert 0.0 <= s["probe_auc"] <= 1.0
    assert set(report["comparisons"]) == set(report["baselines"])
    for name, c in report["comparisons"].items():
        flipped = report["baselines"][name] < 0.5
        assert c["flipped_b"] == flipped and c["value_b"] == pytest.approx(1 - report["baselines"][name] if flipped
                                                                           else report["baselines"][name])
        assert c["estimate"] == pytest.approx(report["auc"] - c["value_b"]) and c["low"] <= c["estimate"] <= c["high"]
    # sigma's scale against the mean's: one value per caption, with its interval
    scale = s["sigma_to_mean"]["captions"]
    assert scale["n"] == len(caps) and scale["low"] <= scale["value"] <= scale["high"]
    shows = s["what_this_shows"]
    assert shows.startswith("**What this shows**") and f"{report['auc']:.3f}" in shows and "07_robustness" in shows
    assert "strongest sigma-free baseline" in shows and "clearly beats" not in shows and "||sigma|| / ||mu||" in shows


def content_hit_rate_lift(run: Path, seed: int, n: int = 40) -> float:
    """Content words' moment hit rate of the trained model minus that of the same model at initialisation
    (the run's settings, ``seed``), on the first ``n`` test captions (as benchmarks/seed_spread.py measures)."""
    import torch

    from ralbook.model import build_model
    from ralbook.studies import analysis
    from ralbook.training.rundir import open_run

    cfg, trained_model, coll = open_run(run, "cpu")
    truth = pipeline.ground_truth(cfg.data.data_root, cfg.data.collection)
    fillers = {w for w, t in dict(truth.word_types).items() if t == "filler"}
    caps = [c for c, _ in coll.captions("test")][:n]
    torch.manual_seed(seed)
    untrained = build_model(cfg.model).eval()
    rate = [analysis.moment_hit_rates(m, coll, caps, truth, fillers, cfg.data.max_frames)["content_hit_rate"]
            for m in (trained_model, untrained)]
    return rate[0] - rate[1]


@pytest.mark.slow
def test_08_uncertainty_methods(trained, demo_root, out_dir):
    """The benchmark table of every method, both figures, sentences from ralbook.stats, and the cache.

    No verdict is asserted (the numbers are what the notebook reports); the test checks that the table holds
    the ensemble and MC-dropout methods, that the conclusion is the study function's, that a second execution
    reads the cached result and gives the same table, and that the ensemble run is reused, not retrained.
    """
    from ralbook.studies import uncertainty_methods as methods

    run, _ = trained
    params = dict(run_dir=str(run), data_root=str(demo_root), ensemble_seeds=[1], ensemble_dir=str(out_dir / "unc"),
                  ensemble_epochs=1, ensemble_hidden_size=TINY["hidden_size"], mc_dropout=2, n_boot=50,
                  cache_dir=str(out_dir / "unc"))
    s = execute("08_uncertainty_methods", out_dir, **params)
    assert not s["cached"] and len(s["ensemble"]) == 1
    methods_seen = set(s["table"]["failure@1"]["methods"])
    assert {"ensemble_disagreement", "mc_score_var", "evidential_u", "sigma", "entropy"} <= methods_seen
    assert s["what_this_shows"] == methods.what_this_shows(s["table"])
    assert s["table"]["ambiguity"]["n"] > 0 and s["table"]["n_boot"] == 50
    assert_figures(s, "risk_coverage", "reliability")
    member = Path(s["ensemble"][0]) / "best.pt"
    stamp = member.stat().st_mtime_ns
    again = execute("08_uncertainty_methods", out_dir, **params)
    assert again["cached"] and again["table"] == s["table"] and member.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_05_word_confidence(trained, out_dir):
    """Word confidence learns to rank content words above fillers, and words find their moment's frames.

    Also checked exactly (no learned quality involved): the frame-branch SumR the notebook computes with the
    learned weights equals the frame SumR of ``evaluate`` on the same run; the fillers' share is reported with
    its paired interval; the static query box ranks 5 videos for ``example_query`` and names unknown words.

    Values measured with ``benchmarks/seed_spread.py --only notebooks`` (this file's notebook 02 run, seeds
    9527 = this test's, 1, 2, 3, 4) on a 2-core AMD EPYC (avx512_bf16, no AMX), torch 2.13 CPU, one thread:

    * ``filler_auc`` (probability that a content word gets more confidence than a filler word, pooled over
      the test captions; 0.5 = no preference): 0.728, 0.739, 0.796, 0.788, 0.839 (min 0.728);
      ``per_caption_auc`` 0.730, 0.736, 0.792, 0.785, 0.839. Untrained models give 0.46-0.60 (8 seeds).
      Threshold 0.65: the smallest trained value minus 0.078, above every untrained value.
    * localisation (share of words whose best-matching frame lies inside the caption's ground-truth moment,
      40 captions): content words 0.335, 0.437, 0.449, 0.473, 0.419 against chance 0.237 (the moment's share of
      the frames): 1.41-1.99 x chance, so "1.5 x chance" failed for this test's own seed on this CPU. Filler
      words 0.299, 0.312, 0.290, 0.299, 0.348: content minus filler 0.036-0.174, too thin to assert.
      Asserted instead: content words above chance (smallest excess 0.098), and the invariant that training
      lifts the content hit rate over the same model untrained (same seed, first 40 test captions): by 0.176,
      0.235, 0.329, 0.241, 0.282 (min 0.176); the bar is 0.08.
    """
    run, _ = trained
    s = execute("05_word_confidence", out_dir, run_dir=str(run), n_queries=4, n_frame_maps=2, n_localisation=40)
    assert len(s["shown"]) == 4
    assert set(s["relative_confidence"]) >= {"filler", "generic", "specific"}
    # relative confidences of a query average to exactly 1 (g sums to 1 over its words)
    counts = {k: v["n"] for k, v in s["relative_confidence"].items()}
    means = {k: v["mean"] for k, v in s["relative_confidence"].items()}
    assert sum(counts[k] * means[k] for k in counts) / sum(counts.values()) == pytest.approx(1.0, abs=1e-4)
    assert s["filler_auc"] > 0.65
    assert s["per_caption_auc"] > 0.65
    loc = s["localisation"]
    assert loc["n_captions"] == 40
    assert loc["content_hit_rate"] > loc["chance"]
    lift = content_hit_rate_lift(run, seed=9527)
    assert lift > 0.08, lift
    assert_figures(s, "heatmaps", "word_frame_0", "word_frame_1", "filler_vs_content", "query_confidence",
                   "query_word_frame")
    assert f"{s['filler_auc']:.3f}" in s["what_this_shows"]
    shares = s["filler_share"]
    assert shares["estimate"] == pytest.approx(shares["value_a"] - shares["value_b"], abs=1e-9)
    assert shares["low"] <= shares["estimate"] <= shares["high"] and 0.0 < shares["value_b"] < 1.0
    assert set(s["weightings"]) == {"uniform", "content only"}
    from ralbook.retrieval.evaluate import evaluate

    cfg, model, coll = pipeline.open_run(run, "cpu")
    ref = evaluate(model, coll, "test", cfg, progress=False)
    assert s["weighting_sumr"]["learned"] == pytest.approx(ref.metrics["frame"]["SumR"], abs=1e-6)
    assert "frame-branch SumR" in s["what_this_shows"] and "ignore" not in s["what_this_shows"].replace(
        "does not ignore", "")
    q = s["query"]
    assert q["unknown"] == [] and len(q["top"]) == 5 and set(q["top"]) <= set(coll.videos("test"))


@pytest.mark.slow
def test_00_quickstart_reuses_a_run(trained, demo_root, out_dir):
    run, train_summary = trained
    s = execute("00_quickstart", out_dir, data_root=str(demo_root), run_dir=str(run))
    assert s["metrics"]["fused"] == pytest.approx(train_summary["test"]["fused"])
    assert_figures(s, "model_diagram", "word_confidence", "word_frame")
    assert s["sumr"]["low"] <= s["metrics"]["fused"]["SumR"] <= s["sumr"]["high"]
    assert "chance" in s["what_this_shows"] and "run" in s and "run_dir" not in s
    # the showcase query is the median-ranked test caption, recomputed here
    cfg, model, coll = pipeline.open_run(run, "cpu")
    from ralbook.retrieval.evaluate import evaluate

    ref = evaluate(model, coll, "test", cfg, progress=False)
    ranks = np.asarray(ref.ranks["fused"])
    assert s["query_rank"] == int(np.sort(ranks)[(len(ranks) - 1) // 2])
    assert s["query"] in s["what_this_shows"] and 0.0 <= s["moment_hit"] <= 1.0


def test_a_missing_run_directory_is_an_error_naming_it(tmp_path):
    from ralbook.errors import RalbookError

    typo = tmp_path / "runs" / "demo" / "rnu"
    with pytest.raises(RalbookError, match=f"run directory {typo} does not exist.*train_if_missing=True"):
        pipeline.ensure_run(typo)
    typo.mkdir(parents=True)
    with pytest.raises(RalbookError, match="holds no trained model"):
        pipeline.ensure_run(typo)
    assert not any(typo.iterdir())  # nothing was trained there


@pytest.mark.slow
def test_a_notebook_given_a_missing_run_fails_with_the_path(tmp_path):
    from ralbook.errors import RalbookError

    typo = tmp_path / "rnu"
    with pytest.raises(RalbookError, match=f"failed in cell .*run directory {typo} does not exist"):
        execute("05_word_confidence", tmp_path, run_dir=str(typo))
    assert not typo.exists()


@pytest.fixture(scope="module")
def alone(tiny_root, out_dir) -> tuple[Path, Path, dict]:
    """04 from a fresh kernel with an empty run_dir, on the tiny collection: it must train a run itself."""
    run = out_dir / "fallback_run"
    where = out_dir / "alone"
    s = execute("04_uncertainty", where, run_dir=str(run), data_root=str(tiny_root), fallback_epochs=1,
                n_projection_videos=2, n_samples=5, train_if_missing=True)
    return run, where, s


@pytest.mark.slow
def test_notebook_runs_alone_training_a_tiny_run_when_needed(alone):
    run, where, s = alone
    assert (run / "best.pt").is_file() and (run / "test_metrics.json").is_file()
    assert "NOTE: no trained model in" in (where / "04_uncertainty.ipynb").read_text()
    assert s["run_dir"] == str(run)
    assert json.loads((run / "config.json").read_text())["train"]["n_epoch"] == 1


@pytest.mark.slow
def test_06_ablation_sweep_runs_02_per_variant(tiny_root, out_dir):
    """Two variants x 2 seeds and GMMFormer v2 alone / + RAL x 2 seeds: 6 trainings, because GMMFormer v2 + RAL
    with a seed is `full` with that seed (one run, two rows); a re-run with other epochs is refused."""
    sweep = out_dir / "sweep"
    variants = {"full": {}, "no_word_conf": {"model.word_confidence": False}}
    params = dict(data_root=str(tiny_root), sweep_dir=str(sweep), variants=variants, seeds=[1, 2], epochs=1,
                  hidden_size=16, backbones=["gmmformer_v2"], backbone_seeds=[1, 2])
    s = execute("06_ablation_sweep", out_dir, **params)
    assert sorted(s["metrics"]) == ["full@1", "full@2", "no_word_conf@1", "no_word_conf@2"]
    assert sorted(s["trained"]) == ["full@1", "full@2", "gmmformer_v2@1", "gmmformer_v2@2", "no_word_conf@1",
                                    "no_word_conf@2"]
    assert s["shared_runs"] == {"gmmformer_v2+RAL@1": "full@1", "gmmformer_v2+RAL@2": "full@2"}
    assert not (sweep / "backbones" / "gmmformer_v2+RAL@1").exists()
    assert json.loads((sweep / "backbones" / "gmmformer_v2@2" / "config.json").read_text())["model"]["csa"] is False
    sumr = {name: m["SumR"] for name, m in s["backbone_metrics"].items()}
    assert sumr["gmmformer_v2+RAL@1"] == s["metrics"]["full@1"]["SumR"]
    (row,) = s["backbones"]
    assert row["SumR alone"] == pytest.approx((sumr["gmmformer_v2@1"] + sumr["gmmformer_v2@2"]) / 2, abs=0.06)
    gains = [sumr[f"gmmformer_v2+RAL@{k}"] - sumr[f"gmmformer_v2@{k}"] for k in (1, 2)]
    assert row["difference"] == pytest.approx(sum(gains) / 2, abs=0.06) and row["seeds"] == 2
    (comparison,) = s["comparisons"]
    assert comparison["variant"] == "no_word_conf" and comparison["comparison"]["n"] == 2
    assert s["seed_only"]["differences"]["2"] == pytest.approx(
        s["metrics"]["full@2"]["SumR"] - s["metrics"]["full@1"]["SumR"])
    shown = json.dumps(json.loads((out_dir / "06_ablation_sweep.ipynb").read_text())["cells"][-1]["outputs"])
    assert "Seed only" in shown and "gmmformer_v2" in shown and "paper's headline gain" in shown
    assert s["what_this_shows"].startswith("**What this shows**")
    assert_figures(s, "backbones", "comparison")
    config = json.loads((sweep / "no_word_conf@2" / "config.json").read_text())
    assert config["model"]["word_confidence"] is False and config["train"]["n_epoch"] == 1
    assert config["train"]["seed"] == 2 and (sweep / "no_word_conf@2" / "02_train_executed.ipynb").is_file()
    assert s["metrics"]["no_word_conf@2"] == pytest.approx(
        json.loads((sweep / "no_word_conf@2" / "test_metrics.json").read_text())["metrics"]["fused"])
    # the same sweep_dir with other settings: refused, naming the difference (no "reusing" of old runs)
    before = (sweep / "full@1" / "best.pt").read_bytes()
    with pytest.raises(pipeline.RalbookError, match="train.n_epoch: run has 1, now 2"):
        execute("06_ablation_sweep", out_dir / "again", **dict(params, epochs=2))
    assert (sweep / "full@1" / "best.pt").read_bytes() == before


@pytest.mark.slow
def test_main_job_runs_selected_notebooks_and_says_where(alone, tiny_root, out_dir, capsys):
    """``ralbook demo`` on the tiny collection with notebook 01 only (the full job is timed by hand).

    Its run directory starts as a copy of the fallback run, which has exactly the configuration the
    main job asks for (demo preset, 1 epoch), so the job resumes a finished run instead of training:
    this also checks that running the main job twice is safe.
    """
    import shutil

    from ralbook.cli import main

    import subprocess

    out = out_dir / "main_job"
    figures = out / "figures"  # the default: inside OUT
    run = out / pipeline.DEMO_RUN_NAME
    shutil.copytree(alone[0], run)
    before = (run / "best.pt").read_bytes()
    status = ["git", "status", "--porcelain", "--untracked-files=all"]
    tree_before = subprocess.run(status, cwd=REPO, capture_output=True, text=True).stdout
    code = main(["demo", "--out", str(out), "--data-root", str(tiny_root), "--epochs", "1", "--notebooks", "01"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err[-2000:]
    assert subprocess.run(status, cwd=REPO, capture_output=True, text=True).stdout == tree_before, \
        "the main job changed the working tree"
    assert (run / "best.pt").read_bytes() == before  # resumed a finished run: nothing retrained
    assert (out / "notebooks" / "01_data_inspection.ipynb").is_file()
    assert json.loads((out / "notebooks" / "01_data_inspection_summary.json").read_text())["has_ground_truth"]
    assert any(p.name.startswith("01_data_inspection_demo") for p in figures.iterdir())
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["epochs"] == 1 and "01_data_inspection" in results["notebooks"]
    for where in (out / "notebooks", run, figures, out / "results.json"):
        assert str(where) in printed


@pytest.mark.slow
def test_figures_command_rewrites_the_curated_folder(alone, tiny_root, out_dir, capsys):
    """``ralbook figures`` = the main job, then curated PNGs (run tag dropped), results.json and RESULTS.md."""
    import shutil

    from ralbook.workbook import results as results_file
    from ralbook.cli import main

    out, curated = out_dir / "figures_job", out_dir / "curated"
    shutil.copytree(alone[0], out / pipeline.DEMO_RUN_NAME)
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "03_evaluate_old_run_recall.png").write_bytes(b"stale")  # from an earlier run
    curated.mkdir()
    (curated / "02_train_curves.png").write_bytes(b"stale")
    code = main(["figures", "--out", str(out), "--data-root", str(tiny_root), "--epochs", "1", "--notebooks", "01",
                 "--to", str(curated)])
    assert code == 0, capsys.readouterr().err[-2000:]
    pngs = sorted(p.name for p in curated.glob("*.png"))
    assert pngs == ["01_data_inspection_counts.png", "01_data_inspection_distributions.png",
                    "01_data_inspection_frame_generation.png", "01_data_inspection_moments.png"]
    results = json.loads((curated / results_file.RESULTS_FILE).read_text())
    assert results == json.loads((out / results_file.RESULTS_FILE).read_text())
    assert (curated / results_file.RESULTS_MD).read_text() == results_file.results_markdown(results, pngs)


@pytest.mark.slow
def test_07_robustness_tiny_study(tiny_root, out_dir):
    """A tiny plan (2 models, 1 seed, 1 epoch, a 2-point PM sweep): runs, cache, figures and generated findings."""
    cache = out_dir / "robustness"
    params = dict(cache_dir=str(cache), ambiguity=[0.5], noise=["low", "high"], models=["ral", "gmmformer_v2"],
                  seeds=[0], loss_scales=[1.0, 10.0], sweep_terms=["pm"], n_train=12, n_val=4, n_test=10, epochs=1,
                  hidden_size=16, n_boot=20)
    s = execute("07_robustness", out_dir, **params)
    # grid 1 x 2 x 2 x 1 = 4 runs, sweep 2 (x1 is the grid's RAL run at noise low): 5 distinct runs
    assert (s["n_runs"], s["trained"], s["cached"]) == (6, 5, 1)
    assert len(list((cache / "runs").iterdir())) == 5
    results = [json.loads(p.read_text()) for p in (cache / "runs").glob("*/result.json")]
    grid = [g for g in s["summary"] if g["group"] == "grid"]
    swept = next(g for g in s["summary"] if g["scale"] == 10.0)
    assert sorted([g["sumr_mean"] for g in grid] + [swept["sumr_mean"]]) == pytest.approx(
        sorted(r["sumr"] for r in results))  # one seed: each mean is the run's own SumR
    assert s["findings"] and all(isinstance(line, str) for line in s["findings"])
    # one seed: every paired comparison is undecided without an interval, and the text says so
    # the suite's thread setting (conftest: RALBOOK_THREADS=1 unless the environment sets it)
    assert s["plan"]["threads"] == int(os.environ["RALBOOK_THREADS"]) and len(s["comparisons"]["pairs"]) == 2
    assert all(p["comparison"]["verdict"] == "undecided" for p in s["comparisons"]["pairs"])
    assert "no comparison has an interval" in s["what_this_shows"] and " leads " not in s["what_this_shows"]
    assert s["what_this_shows"].startswith("**What this shows**") and s["findings"][0] in s["what_this_shows"]
    assert_figures(s, "sumr_vs_ambiguity", "sigma_auc_vs_weight")
    again = execute("07_robustness", out_dir, **params)
    assert (again["trained"], again["cached"]) == (0, 6) and again["summary"] == s["summary"]


def test_main_job_parameters_of_the_opt_in_study(tmp_path):
    params = pipeline.demo_parameters("07_robustness.ipynb", tmp_path, tmp_path / "run", tmp_path / "data",
                                      tmp_path / "figures", "cpu", 0)
    assert params["cache_dir"] == str(tmp_path / "robustness") and params["device"] == "cpu"
    assert "07_robustness.ipynb" in pipeline.NOTEBOOKS and pipeline.ROBUSTNESS_NOTEBOOK == "07_robustness.ipynb"
