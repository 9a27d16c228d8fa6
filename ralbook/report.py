"""What a run shows, in words and files.

* ``*_text`` functions turn a notebook's measured numbers into its closing "What this shows"
  paragraph (markdown). They take plain numbers, so the wording follows the run: a better or
  worse model, or a fused score below the clip score, changes the sentences, not only the digits.
* :func:`collect_results` gathers the main job's notebook summaries into one results file
  (``outputs/demo/results.json``); :func:`results_markdown` renders it as ``figures/RESULTS.md``,
  the only document that quotes numbers of a run.
* :func:`curate_figures` copies a run's PNGs into ``figures/`` under stable names; the command
  ``python -m ralbook figures`` (``make figures``) does all three after running the main job.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ralbook.environment import ENVIRONMENT_KEY, environment_lines

RECALL_AT: tuple[int, ...] = (1, 5, 10, 100)
RESULTS_FILE = "results.json"
RESULTS_MD = "RESULTS.md"
FIGURES_DIR = "figures"
# Notebook summaries the results file is made of, in order; the opt-in ones (06, 07) only when they were run
# (a missing summary file is left out).
SUMMARY_NOTEBOOKS: tuple[str, ...] = ("00_quickstart", "01_data_inspection", "02_train", "03_evaluate",
                                      "04_uncertainty", "05_word_confidence", "06_ablation_sweep",
                                      "07_robustness")
# Summary keys left out of the results file (file lists and per-item arrays).
_DROPPED_KEYS = {"figures", "run_files", "run_dir", "cache_dir", "epochs", "val_sumr", "shown"}


# ----------------------------------------------------------------------------- display and chance levels


def setup_display() -> None:
    """pandas options for the notebooks: whole captions (no cut at 50 characters), 3 decimals."""
    import pandas as pd

    pd.set_option("display.max_colwidth", 200)
    pd.set_option("display.precision", 3)


def chance_recall(n_videos: int, k: int) -> float:
    """Expected R@K (%) of a random ranking of ``n_videos`` videos, one relevant video per query."""
    from ralbook.evaluate import chance_metrics

    return chance_metrics([1], n_videos)[f"R@{k}"] if n_videos else float("nan")


def chance_sumr(n_videos: int) -> float:
    """Expected SumR of a random ranking: sum of :func:`chance_recall` over K = 1, 5, 10, 100."""
    return sum(chance_recall(n_videos, k) for k in RECALL_AT)


def _f(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _bullets(lines: Sequence[str]) -> str:
    return "**What this shows**\n\n" + "\n".join(f"* {line}" for line in lines if line)


# ----------------------------------------------------------------------------- "What this shows"


def quickstart_text(metrics: Mapping[str, Mapping[str, float]], n_videos: int, n_queries: int, epochs: int,
                    query: str, rank: int, how: str, moment_hit: Optional[float] = None) -> str:
    """00: how good the small model is against chance, and what the showcase query is and why."""
    fused = metrics["fused"]
    chance = chance_sumr(n_videos)
    lines = [
        f"After {epochs} epochs the model puts the right video first for {_f(fused['R@1'])}% of the {n_queries} "
        f"test captions and in the top 10 for {_f(fused['R@10'])}% (chance: {_f(chance_recall(n_videos, 10))}%); "
        f"SumR {_f(fused['SumR'])} against {_f(chance)} for a random ranking of {n_videos} videos.",
        f"The query shown, {query}, was chosen as {how}; its video is ranked {rank}, so it is a typical "
        f"case of this model{' rather than a hand-picked success' if rank > 1 else ''}.",
    ]
    if moment_hit is not None:
        lines.append(f"{_f(100 * moment_hit, 0)}% of its words find their best frame inside the ground-truth "
                     "moment (green box): the frame score looks at the part of the video the caption describes."
                     if moment_hit >= 0.5 else
                     f"only {_f(100 * moment_hit, 0)}% of its words find their best frame inside the ground-truth "
                     "moment (green box): for this caption the words mostly match frames elsewhere in the video.")
    return _bullets(lines)


def data_text(n_videos: Mapping[str, int], n_captions: Mapping[str, int], share_long: float, share_short: float,
              share_cut: float, ambiguous: Optional[float] = None, ideal_r1: Optional[float] = None,
              ideal_split: str = "test") -> str:
    """01: the sizes, and how much of the data the preprocessing changes (binning, cutting)."""
    sizes = ", ".join(f"{s} {n_videos[s]} videos / {n_captions[s]} captions" for s in n_videos)
    lines = [
        f"Sizes: {sizes}.",
        f"{_f(100 * share_long)}% of the videos have more than 128 frames and are averaged down for the frame "
        f"branch; {_f(100 * share_short)}% have fewer than 32, so their clips repeat frames.",
        (f"{_f(100 * share_cut)}% of the captions are longer than 30 tokens and lose their tail." if share_cut
         else "No caption is longer than 30 tokens, so none is cut."),
    ]
    if ambiguous is not None:
        lines.append(f"{_f(100 * ambiguous, 0)}% of the captions are ambiguous by construction (generic words).")
    if ideal_r1 is not None:
        lines.append(f"Even an ideal model reaches only R@1 {_f(100 * ideal_r1)} on the {ideal_split} split: ambiguous "
                     "captions truthfully describe several videos, so a retrieval score must be read against "
                     "that ceiling, not against 100.")
    return _bullets(lines)


def training_text(records: Sequence[Mapping[str, Any]], best_epoch: Optional[int], hard_start: int) -> str:
    """02: how validation SumR evolved, the triplet jump at the hard-negative epoch, the learning rate."""
    if not records:
        return _bullets(["No epoch was recorded."])
    sumr = [float(r["val"]["fused"]["SumR"]) for r in records]
    lrs = [float(r["lr"]) for r in records]
    lines = [f"Validation SumR (fused) went from {_f(sumr[0])} after epoch {records[0]['epoch']} to "
             f"{_f(max(sumr))} (epoch {best_epoch if best_epoch is not None else records[sumr.index(max(sumr))]['epoch']},"
             f" kept as best.pt) over {len(records)} epochs."]

    def triplet(r: Mapping[str, Any]) -> float:
        loss = r.get("loss", {})
        return float(loss.get("clip_triplet", 0.0)) + float(loss.get("frame_triplet", 0.0))

    epochs = [int(r["epoch"]) for r in records]
    if hard_start in epochs and hard_start - 1 in epochs:
        before, after = triplet(records[epochs.index(hard_start - 1)]), triplet(records[epochs.index(hard_start)])
        i = epochs.index(hard_start)
        val = (f"validation SumR went from {_f(sumr[i - 1])} to {_f(sumr[i])} at the same epoch, so the loss rises "
               "because the task got harder, not because the model got worse" if sumr[i] >= sumr[i - 1] else
               f"validation SumR also fell, from {_f(sumr[i - 1])} to {_f(sumr[i])}, at that epoch")
        if after > before:
            lines.append(
                f"The triplet terms jump from {before:.3g} to {after:.3g} ({after / before:.1f}x) at epoch "
                f"{hard_start}, where hard negatives start: negatives are now drawn among the highest-scoring "
                f"wrong videos, so the hinge is active for many more queries; {val}.")
        else:
            lines.append(f"The triplet terms do not rise at epoch {hard_start}, where hard negatives start "
                         f"({before:.3g} before, {after:.3g} after); {val}.")
    else:
        lines.append(f"Hard negatives start at epoch {hard_start}, outside the epochs run here, so the triplet "
                     "terms show no jump.")
    lines.append(f"The learning rate at the end of each epoch went from {lrs[0]:.2e} (epoch {records[0]['epoch']}, "
                 f"after the short warm-up) to {lrs[-1]:.2e}: it decays linearly to 0 at the last step, so late "
                 "epochs change the model less and less.")
    return _bullets(lines)


def evaluation_text(metrics: Mapping[str, Mapping[str, float]], n_videos: int, median_rank: float,
                    alpha: Optional[float] = None, n_compared: int = 1) -> str:
    """03: the three scores against each other and against chance, and what that says about the branches."""
    clip, frame, fused = (metrics[k]["SumR"] for k in ("clip", "frame", "fused"))
    weight = f" (weight {1 - alpha:.2f})" if alpha is not None else ""
    lines = [f"Fused SumR {_f(fused)}, clip {_f(clip)}, frame {_f(frame)}; a random ranking gives "
             f"{_f(chance_sumr(n_videos))}. The median query finds its video at rank {median_rank:.0f} of {n_videos}."]
    if fused < clip:
        weaker = (f" On its own the frame branch (CSA) reaches only SumR {_f(frame)}: on this run it has not learned "
                  "enough to add information the clip branch lacks." if frame < clip else "")
        lines.append(f"The fused score is **below the clip score alone** ({_f(fused)} < {_f(clip)}): adding the "
                     f"frame branch{weight} hurts on this run, and ranking by the clip score alone would be "
                     f"better.{weaker}")
    elif fused < frame:
        lines.append(f"The fused score is below the frame score alone ({_f(fused)} < {_f(frame)}): here the clip "
                     "branch is the one that hurts the combination.")
    else:
        lines.append(f"The fused score is above both branches (+{_f(fused - max(clip, frame))} SumR over the better "
                     "one): the clip and frame branches make different mistakes, which is why RAL combines them.")
    if n_compared < 2:
        lines.append("No other run was given (`compare_runs`), so no comparison across runs is drawn.")
    return _bullets(lines)


def word_confidence_text(filler_auc: Optional[float], per_caption_auc: Optional[float],
                         localisation: Optional[Mapping[str, float]]) -> str:
    """05: whether word confidence prefers content words, and whether words find their moment."""
    lines = []
    if filler_auc is None:
        lines.append("This collection records no word types, so the filler analysis could not be run.")
    else:
        verdict = ("content words get more confidence than fillers" if filler_auc >= 0.6 else
                   "fillers get more confidence than content words" if filler_auc <= 0.4 else
                   "word confidence hardly separates content words from fillers")
        lines.append(f"AUC content vs filler words {filler_auc:.3f} (0.5 = no preference; per caption "
                     f"{_f(per_caption_auc, 3)}): {verdict}.")
    if localisation:
        content, filler, chance = (localisation.get(k) for k in ("content_hit_rate", "filler_hit_rate", "chance"))
        lines.append(f"Content words find their best frame inside the described moment {_f(100 * content, 0)}% of "
                     f"the time, filler words {_f(100 * filler, 0)}%, a random frame {_f(100 * chance, 0)}%"
                     + (": content words localise the moment." if content > chance + 0.1 else
                        ": no clear localisation by content words on this run."))
    return _bullets(lines)


def uncertainty_text(reports: Mapping[str, Mapping[str, Any]], probe: Optional[float] = None,
                     length_rho: Optional[float] = None) -> str:
    """04: per label file, whether sigma's AUC interval excludes 0.5 and whether sigma beats each baseline."""
    from ralbook.uncertainty import interpret

    lines = interpret(dict(reports), probe)
    if not reports:
        lines.append("No label file was found for this split, so the sigma report (sigma against its baselines) "
                     "was not run; `python -m ralbook sigma-report` takes a label file of your own.")
    if length_rho is not None:
        lines.append(f"Caption sigma and caption length: Spearman {length_rho:.3f} (0 = unrelated).")
    lines.append("For how this changes with the share of ambiguous captions, visual noise and the L_PM / L_DA "
                 "weights, see 07_robustness.ipynb.")
    return _bullets(lines)


def robustness_text(plan: Mapping[str, Any], findings: Sequence[str], train_minutes: Optional[float] = None) -> str:
    """07: the plan's size, the study's findings, and how much a gap means with this many seeds.

    ``train_minutes``: the summed time of the distinct runs (training and evaluation) when they were made.
    """
    seeds = list(plan["seeds"])
    sizes = (f"Plan: {len(seeds)} seed(s) {seeds}, {plan['epochs']} epochs, {plan['n_train']}/{plan['n_val']}/"
             f"{plan['n_test']} videos, hidden size {plan['hidden_size']}; ambiguity {list(plan['ambiguity'])}, "
             f"noise {list(plan['noise'])}.")
    if train_minutes is not None:
        sizes += (f" Its distinct runs took {train_minutes:.1f} minutes to train and evaluate when they were made "
                  f"(on the machine that made the cache, under its load then).")
    caveat = ("With a single seed there is no spread: differences are not yet evidence." if len(seeds) < 2
              else "Spreads are standard deviations over seeds; a gap inside the spread is not a difference.")
    return _bullets([sizes, *findings, caveat])


# ----------------------------------------------------------------------------- the results file


def _trim(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in _DROPPED_KEYS}


def collect_results(summary_dir: str | Path, config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The main job's results: each notebook's summary (without file lists) plus the run's settings."""
    summary_dir = Path(summary_dir)
    notebooks = {}
    for name in SUMMARY_NOTEBOOKS:
        path = summary_dir / f"{name}_summary.json"
        if path.is_file():
            notebooks[name] = _trim(json.loads(path.read_text(encoding="utf-8")))
    settings = {}
    if config:
        settings = {"preset": config.get("name"), "epochs": config["train"]["n_epoch"],
                    "seed": config["train"]["seed"], "hidden_size": config["model"]["hidden_size"],
                    "collection": config["data"]["collection"]}
    out = {"generated_by": "python -m ralbook demo", "settings": settings, "notebooks": notebooks}
    if config and isinstance(config.get(ENVIRONMENT_KEY), Mapping):
        out[ENVIRONMENT_KEY] = dict(config[ENVIRONMENT_KEY])  # the machine that trained the run (ralbook.environment)
    return out


def write_results(path: str | Path, results: Mapping[str, Any]) -> Path:
    from ralbook.pipeline import json_ready

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_ready(results), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _get(d: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return d


# (notebook, summary key, what it is, format) of the single numbers in the headline table.
_SCALAR_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("03_evaluate", "median_rank_fused", "median rank of the right video (fused)", "{:.0f}"),
    ("02_train", "best_epoch", "best validation epoch", "{}"),
    ("02_train", "seconds_per_epoch", "seconds per training epoch (mean; machine-dependent)", "{:.1f}"),
    ("05_word_confidence", "filler_auc", "word confidence, AUC content vs filler words (0.5 = none)", "{:.3f}"),
    ("04_uncertainty", "ambiguity_auc", "sigma, AUC ambiguous vs specific captions (0.5 = none)", "{:.3f}"),
)


def headline(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(what, value) rows of the key numbers a results file holds; absent numbers are left out."""
    nb = results.get("notebooks", {})
    rows: list[tuple[str, str]] = []
    settings = results.get("settings", {})
    if settings:
        rows.append(("run", f"preset {settings.get('preset')}, {settings.get('epochs')} epochs, seed "
                            f"{settings.get('seed')}, hidden size {settings.get('hidden_size')}"))
    n_videos, n_queries = _get(nb, "03_evaluate", "n_videos"), _get(nb, "03_evaluate", "n_queries")
    if n_videos:
        rows.append(("test split", f"{n_videos} videos, {n_queries} captions"))
        rows.append(("chance SumR (random ranking)", f"{chance_sumr(int(n_videos)):.1f}"))
    for kind in ("fused", "clip", "frame"):
        m = _get(nb, "03_evaluate", "metrics", kind)
        if m:
            rows.append((f"test {kind} score: R@1 / R@5 / R@10 / R@100 / SumR",
                         " / ".join(f"{m[k]:.1f}" for k in ("R@1", "R@5", "R@10", "R@100", "SumR"))))
    for notebook, key, what, fmt in _SCALAR_ROWS:
        value = _get(nb, notebook, key)
        if value is not None:
            rows.append((what, fmt.format(value)))
    loc = _get(nb, "05_word_confidence", "localisation")
    if loc:
        rows.append(("best frame inside the moment: content / filler words / chance",
                     " / ".join(f"{loc[k]:.2f}" for k in ("content_hit_rate", "filler_hit_rate", "chance"))))
    ideal = _get(nb, "01_data_inspection", "ideal_r1")
    if ideal is not None:
        rows.append(("R@1 of an ideal model on the test split (ambiguity ceiling)", f"{100 * ideal:.1f}"))
    return rows


def results_markdown(results: Mapping[str, Any], figures: Sequence[str] = ()) -> str:
    """``figures/RESULTS.md``: the key numbers, each notebook's conclusion, and the curated figures."""
    lines = ["# Results of the demo run", "",
             "Generated by `python -m ralbook figures` (`make figures`) from `outputs/demo/results.json`; do not",
             "edit by hand. This is the only document that quotes numbers of a run; the others point here.",
             "Timings depend on the machine and its load.", "",
             "| what | value |", "| --- | --- |"]
    lines += [f"| {what} | {value} |" for what, value in headline(results)]
    conclusions = [(name, s["what_this_shows"]) for name, s in results.get("notebooks", {}).items()
                   if isinstance(s, Mapping) and s.get("what_this_shows")]
    for name, text in conclusions:
        lines += ["", f"## {name}", "", text.replace("**What this shows**\n\n", "")]
    env = results.get(ENVIRONMENT_KEY)
    lines += ["", "## Machine", ""]
    if isinstance(env, Mapping):
        lines += ["The run was trained here; the same seed gives the same numbers only on a machine where the CPU "
                  "model and flags, the threads, torch and the precision match (README, \"Same seed, same run\").",
                  "", "| what | value |", "| --- | --- |"] + environment_lines(env)
    else:
        lines.append("Not recorded (the run was trained before ralbook recorded its machine).")
    if figures:
        lines += ["", "## Figures", ""] + [f"* [`{f}`]({f})" for f in figures]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the curated figures/ folder


def curated_name(file_name: str, tags: Sequence[str]) -> str:
    """``03_evaluate_ral_demo_recall.png`` -> ``03_evaluate_recall.png`` for run tag ``ral_demo``: the curated
    folder holds one run, so its tag is dropped; names stay unique because each notebook's figure names are."""
    for tag in tags:
        stem_parts = file_name.split(f"_{tag}_", 1)
        if len(stem_parts) == 2 and stem_parts[0][:2].isdigit():
            return f"{stem_parts[0]}_{stem_parts[1]}"
    return file_name


def curate_figures(source: str | Path, target: str | Path, tags: Sequence[str]) -> list[str]:
    """Replace the PNGs of ``target`` by those of ``source`` under :func:`curated_name`; returns the new names."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    pngs = sorted(source.glob("*.png"))
    names = [curated_name(p.name, tags) for p in pngs]
    if len(set(names)) != len(names):
        raise ValueError(f"curated figure names collide: {sorted(n for n in names if names.count(n) > 1)}")
    for old in target.glob("*.png"):
        old.unlink()
    for path, name in zip(pngs, names):
        shutil.copyfile(path, target / name)
    return names


def add_figures_arguments(parser: argparse.ArgumentParser) -> None:
    from ralbook.pipeline import add_demo_arguments

    add_demo_arguments(parser)
    parser.add_argument("--to", default=FIGURES_DIR, help="the curated folder to rewrite (default: figures)")


def run_figures(args: argparse.Namespace) -> int:
    """Run the main job (reusing its run), then rewrite figures/ and figures/RESULTS.md from what it wrote."""
    from ralbook.pipeline import DEMO_RUN_NAME, repo_root, resolve_path, run_demo

    root = repo_root()
    out = resolve_path(args.out, root)
    target = resolve_path(args.to, root)
    figures_dir = resolve_path(args.figures, root) if args.figures else out / "figures"
    for stale in figures_dir.glob("*.png"):  # only this run's figures may reach the curated folder
        stale.unlink()
    status = run_demo(args)
    names = curate_figures(figures_dir, target, (DEMO_RUN_NAME, "demo"))
    results = json.loads((out / RESULTS_FILE).read_text(encoding="utf-8"))
    write_results(target / RESULTS_FILE, results)
    (target / RESULTS_MD).write_text(results_markdown(results, names), encoding="utf-8")
    print(f"curated figures and {RESULTS_MD} written to {target} ({len(names)} PNGs)")
    return status
