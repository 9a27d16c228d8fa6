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

import math
from typing import Any, Mapping, Optional, Sequence

from ralbook import stats
from ralbook.retrieval.metrics import chance_metrics
from ralbook.stats import Comparison, Estimate, describe, describe_vs_chance, summary_line
from ralbook.studies.uncertainty import interpret


RECALL_AT: tuple[int, ...] = (1, 5, 10, 100)
# Notebook summaries the results file is made of, in order; the opt-in ones (06, 07) only when they were run
# (a missing summary file is left out).
SUMMARY_NOTEBOOKS: tuple[str, ...] = ("00_quickstart", "01_data_inspection", "02_train", "03_evaluate",
                                      "04_uncertainty", "05_word_confidence", "06_ablation_sweep",
                                      "07_robustness", "08_uncertainty_methods")


# ----------------------------------------------------------------------------- display and chance levels


def setup_display() -> None:
    """pandas options for the notebooks: whole captions (no cut at 50 characters), 3 decimals."""
    import pandas as pd

    pd.set_option("display.max_colwidth", 200)
    pd.set_option("display.precision", 3)


def chance_recall(n_videos: int, k: int) -> float:
    """Expected R@K (%) of a random ranking of ``n_videos`` videos, one relevant video per query."""

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
                    query: str, rank: int, how: str, moment_hit: Optional[float] = None,
                    sumr: Optional[Estimate] = None) -> str:
    """00: how good the small model is against chance, and what the showcase query is and why.

    ``sumr``: the fused SumR with its interval over queries (``stats.bootstrap_mean`` of the per-query values);
    "above chance" is said only when that interval lies above a random ranking's SumR.
    """
    fused = metrics["fused"]
    chance = chance_sumr(n_videos)
    lines = [
        f"After {epochs} epochs the model puts the right video first for {_f(fused['R@1'])}% of the {n_queries} "
        f"test captions and in the top 10 for {_f(fused['R@10'])}% (chance: {_f(chance_recall(n_videos, 10))}%); "
        f"SumR {_f(fused['SumR'])} against {_f(chance)} for a random ranking of {n_videos} videos.",
    ]
    if sumr is not None:
        lines.append(describe_vs_chance(sumr, chance=chance, what=f"Fused SumR over the {n_queries} test captions"))
    lines.append(f"The query shown, {query}, was chosen as {how}; its video is ranked {rank}, so it is a typical "
                 f"case of this model{' rather than a hand-picked success' if rank > 1 else ''}.")
    if moment_hit is not None:
        lines.append(f"{_f(100 * moment_hit, 0)}% of its words find their best frame inside the ground-truth "
                     "moment (green box): the frame score looks at the part of the video the caption describes."
                     if moment_hit >= 0.5 else
                     f"Only {_f(100 * moment_hit, 0)}% of its words find their best frame inside the ground-truth "
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


def split_sizes_text(n_val: int, n_test: int) -> str:
    """Why validation and test SumR cannot be compared: each ranks among its own split's videos."""
    always = " (R@100 is 100 for every caption when a split has at most 100 videos)" if min(n_val, n_test) <= 100 else ""
    return (f"Validation SumR ranks each caption among {n_val} videos and test SumR among {n_test}: recall at a fixed "
            f"K is easier among fewer videos{always}, so the two numbers are not comparable with each other, only "
            f"each with its own chance level ({_f(chance_sumr(n_val))} and {_f(chance_sumr(n_test))}).")


def training_text(records: Sequence[Mapping[str, Any]], best_epoch: Optional[int], hard_start: int,
                  n_val: Optional[int] = None, n_test: Optional[int] = None,
                  msra_lines: Sequence[str] = ()) -> str:
    """02: how validation SumR evolved (against its chance level), the triplet jump at the hard-negative
    epoch, the learning rate, why validation and test SumR differ, and the MSRA diagnostics
    (``msra_lines``, from :func:`ralbook.studies.msra.msra_text`)."""
    if not records:
        return _bullets(["No epoch was recorded."])
    sumr = [float(r["val"]["fused"]["SumR"]) for r in records]
    lrs = [float(r["lr"]) for r in records]
    chance = f" (a random ranking of the {n_val} validation videos: {_f(chance_sumr(n_val))})" if n_val else ""
    lines = [f"Validation SumR (fused) went from {_f(sumr[0])} after epoch {records[0]['epoch']} to "
             f"{_f(max(sumr))} (epoch {best_epoch if best_epoch is not None else records[sumr.index(max(sumr))]['epoch']},"
             f" kept as best.pt) over {len(records)} epochs{chance}."]

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
    if n_val and n_test:
        lines.append(split_sizes_text(n_val, n_test))
    lines.extend(msra_lines)
    return _bullets(lines)


def _trend(c: Comparison, rises: str, falls: str, what: str, undecided: str = "") -> str:
    """A sentence from a comparison's verdict (never from its point estimate): rises / falls / undecided.

    ``what`` names the difference whose numbers follow; ``undecided`` is the sentence's start when the
    interval includes 0 (default: "the data cannot tell whether <what> differs from 0").
    """
    numbers = f"{summary_line(c)}, {100 * c.level:g}% CI, {c.method}"
    if c.verdict == "better":
        return f"{rises} ({what} {numbers})."
    if c.verdict == "worse":
        return f"{falls} ({what} {numbers})."
    needed = c.needed_n()
    per = "" if c.paired else " per group"
    more = f"; about {needed:,} {c.unit}{per} would resolve a difference of this size" if needed else ""
    start = undecided or f"the data cannot tell whether {what} differs from 0"
    return f"{start} ({what} {numbers}){more}."


def _cap(sentence: str) -> str:
    """The sentence with its first letter upper-case (generated sentences may start with a name)."""
    return sentence[:1].upper() + sentence[1:]


def _share(e: Estimate) -> str:
    return f"{e.value:.0f}% ({100 * e.level:g}% CI {e.low:.0f} to {e.high:.0f})"


def evaluation_text(metrics: Mapping[str, Mapping[str, float]], n_videos: int, median_rank: float,
                    alpha: Optional[float] = None, n_compared: int = 1, *,
                    branches: Sequence[Comparison] = (), shares: Optional[Mapping[str, Estimate]] = None,
                    sweep: Sequence[Any] = (), multi: Optional[Mapping[str, Any]] = None,
                    frame: Optional[Mapping[str, Any]] = None) -> str:
    """03: the scores against chance, fused against each branch, and what the branches' mistakes and the frame
    branch's words measure.

    Every comparative sentence comes from a :class:`ralbook.stats.Comparison` (``branches``: fused vs each
    branch, paired over queries; ``sweep``: points with ``alpha``, ``value`` and ``vs_model``); ``shares``:
    percent of queries the clip / frame branch ranks better (:func:`ralbook.studies.fusion.branch_shares`);
    ``multi``: ``standard``, ``truthful`` and ``ideal`` metric dicts plus ``n_queries``,
    ``n_truthful_not_annotated`` and ``n_not_truthful``; ``frame``: ``places`` (place -> Estimate), ``vs_chance``
    (place -> Comparison of words' share against frames' share), ``lured`` (that comparison for "other
    moment sharing a concept" on the captions whose video has one; replaces the all-caption one), ``length``
    and ``filler`` (each a Comparison of the gap between the highest and the lowest bin, or None).
    """
    clip, frame_sumr, fused = (metrics[k]["SumR"] for k in ("clip", "frame", "fused"))
    lines = [f"Fused SumR {_f(fused)}, clip {_f(clip)}, frame {_f(frame_sumr)}; a random ranking gives "
             f"{_f(chance_sumr(n_videos))}. The median query finds its video at rank {median_rank:.0f} of {n_videos}."]
    for c in branches:
        lines.append(_cap(describe(c, what=c.metric)))
    if shares:
        clip_wins, frame_wins, tie = shares["clip better"], shares["frame better"], shares["tie"]
        text = (f"Per query, the clip branch ranks the annotated video higher for {_share(clip_wins)} of the "
                f"queries, the frame branch for {_share(frame_wins)}, and they tie for {_share(tie)}.")
        if frame_wins.low > 0.0 and clip_wins.low > 0.0:
            text += (" So the branches do make different mistakes (each wins a share of queries whose interval "
                     "excludes 0); whether fusing them gains anything is the fused-versus-branch comparison above.")
        else:
            text += (" One branch wins no share distinguishable from 0, so this run gives no evidence that the "
                     "branches make different mistakes.")
        lines.append(text)
    if sweep:
        best = max(sweep, key=lambda p: p.value)
        trained = f"the configured alpha {alpha:g}" if alpha is not None else "the configured alpha"
        grid = f"{min(p.alpha for p in sweep):g} to {max(p.alpha for p in sweep):g}"
        if alpha is not None and abs(best.alpha - alpha) < 1e-9:
            lines.append(f"Sweeping the fusion weight over {grid} (1 = clip only, 0 = frame only), SumR is highest "
                         f"at {trained} itself ({_f(best.value)}).")
        else:
            lines.append(f"Sweeping the fusion weight over {grid} (1 = clip only, 0 = frame only), SumR is highest at "
                         f"alpha {best.alpha:g} ({_f(best.value)}) against {trained}: "
                         + describe(best.vs_model, what="SumR")
                         + f" That alpha was picked as the best of {len(sweep)} on these same queries, so its "
                           "interval is optimistic; only a weight chosen on the validation split and compared on "
                           "the test split would show that another alpha is better.")
    if multi:
        std, tru, ideal = multi["standard"], multi["truthful"], multi["ideal"]
        n = multi["n_queries"]
        lines.append(f"Against every truthful match (the ground truth lists all videos an ambiguous caption "
                     f"describes) R@1 is {_f(tru['R@1'])} and SumR {_f(tru['SumR'])}, beside standard R@1 "
                     f"{_f(std['R@1'])} and SumR {_f(std['SumR'])}; an ideal model reaches standard R@1 "
                     f"{_f(ideal['R@1'])} and SumR {_f(ideal['SumR'])}, the ceiling standard recall is read against.")
        lines.append(f"Of the {n} queries, {multi['n_truthful_not_annotated']} have a top-1 video that truly matches "
                     f"the caption but is not the annotated one (standard recall counts them as misses); "
                     f"{multi['n_not_truthful']} have a top-1 that does not match: only those are failures.")
    if frame:
        places = frame.get("places")
        if places:
            own, lured, other, back = (places[p] for p in ("own moment", "other moment sharing a concept",
                                                           "other moment, no shared concept", "background"))
            lines.append(f"The frame branch scores each word by its best frame. Of the content words, {_share(own)} "
                         f"find it inside their own moment, {_share(lured)} in another moment of the same video "
                         f"that shares a concept with it, {_share(other)} in another moment and {_share(back)} in "
                         "the background between moments.")
        versus = dict(frame.get("vs_chance") or {})
        if frame.get("lured") is not None:  # the same comparison on the captions whose video has such a moment
            versus["other moment sharing a concept"] = frame["lured"]
        for place, where in (("own moment", "their own moment"),
                             ("other moment sharing a concept", "another moment sharing a concept")):
            c = versus.get(place)
            if c is not None:
                lines.append(_cap(_trend(
                    c, f"Content words find their best frame in {where} more often than a random frame lies there",
                    f"Content words find their best frame in {where} less often than a random frame lies there",
                    "content words' share minus frames' share, in points",
                    f"the data cannot tell content words' best frames from random frames in {where}")))
        for key, what, rises, falls in (
                ("length", "the clip-minus-frame SumR gap between the longest and the shortest videos (tercile bins)",
                 "The frame branch falls further behind the clip branch on long videos",
                 "The frame branch falls further behind the clip branch on short videos"),
                ("filler",
                 "the clip-minus-frame SumR gap between the captions with most and fewest fillers (tercile bins)",
                 "The frame branch falls further behind on captions with more fillers",
                 "The frame branch falls further behind on captions with fewer fillers")):
            c = frame.get(key)
            if c is not None:
                lines.append(_cap(_trend(c, rises, falls, what)))
        lines.append("These are associations across queries, not causes: in the demo generator video length, "
                     "filler share and shared concepts vary together with other properties of a query. A "
                     "collection regenerated with one factor held fixed (one video length, no fillers, no shared "
                     "concepts) and the model retrained would decide which of them costs the frame branch most.")
    if n_compared < 2:
        lines.append("No other run was given (`compare_runs`), so no comparison across runs is drawn.")
    return _bullets(lines)


def _filler_share_sentence(c: stats.Comparison) -> str:
    """(a) the fillers' share of the confidence mass against their uniform share, from the paired interval."""
    half = (c.high - c.low) / 2.0
    d = min(5, max(3, 1 - math.floor(math.log10(half)))) if half > 0 else 3  # two significant digits of the CI
    numbers = (f"{c.value_a:.3f} of a caption's word confidence against {c.value_b:.3f} under uniform weights; "
               f"difference {c.estimate:+.{d}f}, {100 * c.level:g}% CI {c.low:+.{d}f} to {c.high:+.{d}f}, "
               f"paired over {c.n:,} captions with both kinds of words")
    ratio = c.value_a / c.value_b if c.value_b > 0 else math.nan
    verdict = c.verdict
    if verdict == "better":  # higher_is_better=False: a lower filler share reads "better"
        return (f"Fillers get less weight than their share of the words ({numbers}). They keep about {ratio:.0%} of "
                f"their uniform share: word confidence takes about {1 - ratio:.0%} of it away; it does not ignore "
                f"them.")
    if verdict == "worse":
        return (f"Fillers get more weight than their share of the words ({numbers}): word confidence does not "
                f"down-weight them on this run.")
    needed = c.needed_n()
    more = f"; about {needed:,} captions would resolve a difference of this size" if needed else ""
    return f"The fillers' weight cannot be told from their uniform share at this size ({numbers}){more}."


def word_confidence_text(shares: Optional[stats.Comparison], filler_auc: Optional[float],
                         per_caption_auc: Optional[stats.Estimate],
                         weightings: Optional[Mapping[str, stats.Comparison]] = None,
                         localisation: Optional[Mapping[str, float]] = None,
                         type_means: Optional[Mapping[str, float]] = None,
                         metric_what: str = "frame-branch SumR") -> str:
    """05: what word confidence does to fillers, measured three ways, each sentence from its interval.

    ``shares``: the fillers' confidence mass vs their uniform share (``FillerShares.comparison``);
    ``filler_auc``: pooled AUC content vs filler (a ranking statement, no interval: worded as a number);
    ``per_caption_auc``: the mean per-caption AUC with its bootstrap interval, worded against 0.5;
    ``weightings``: frame-branch SumR with learned weights vs each other weighting (``compare_weightings``);
    ``type_means``: mean relative confidence per word type (1 = uniform share), descriptive.
    """
    lines = []
    if shares is None and filler_auc is None:
        lines.append("This collection records no word types, so the filler analysis could not be run.")
    if shares is not None:
        lines.append(_filler_share_sentence(shares))
    if type_means:
        lines.append("Mean relative confidence (1 = the uniform share): "
                     + ", ".join(f"{k} words {v:.2f}" for k, v in type_means.items()) + ".")
    if filler_auc is not None:
        text = (f"Pooled over the split, a content word is ranked above a filler word with probability "
                f"{filler_auc:.3f} (AUC; 0.5 = no preference).")
        if per_caption_auc is not None:
            text += " " + stats.describe_vs_chance(per_caption_auc, chance=0.5,
                                                   what="Within captions, the mean per-caption AUC")
            if per_caption_auc.low > 0.5:
                text += (" Content words are ranked above fillers; that is an ordering, not a weight: how much "
                         "weight fillers keep is the share above.")
        lines.append(text)
    for comparison in (weightings or {}).values():
        sentence = stats.describe(comparison, what=metric_what)
        lines.append(sentence[:1].upper() + sentence[1:])
    if localisation:
        content, filler, chance = (localisation.get(k) for k in ("content_hit_rate", "filler_hit_rate", "chance"))
        lines.append(f"Content words find their best frame inside the described moment {_f(100 * content, 0)}% of "
                     f"the time, filler words {_f(100 * filler, 0)}%, a random frame {_f(100 * chance, 0)}% "
                     f"({localisation.get('n_captions', 'n/a')} captions; shares of words with no interval here, so "
                     f"they describe this sample and decide nothing).")
    return _bullets(lines)


def uncertainty_text(reports: Mapping[str, Mapping[str, Any]], probe: Optional[float] = None,
                     length_rho: Optional[float] = None, msra_lines: Sequence[str] = ()) -> str:
    """04: per label file, whether sigma's AUC interval excludes 0.5 and how sigma compares with the strongest
    sigma-free baseline and the others (paired intervals); then the MSRA diagnostics (``msra_lines``)."""

    lines = interpret(dict(reports), probe)
    if not reports:
        lines.append("No label file was found for this split, so the sigma report (sigma against its baselines) "
                     "was not run; `python -m ralbook sigma-report` takes a label file of your own.")
    if length_rho is not None:
        lines.append(f"Caption sigma and caption length: Spearman {length_rho:.3f} (0 = unrelated).")
    lines.extend(msra_lines)
    lines.append("For how this changes with the share of ambiguous captions, visual noise and the L_PM / L_DA "
                 "weights, see 07_robustness.ipynb.")
    return _bullets(lines)


def robustness_text(plan: Mapping[str, Any], findings: Sequence[str], train_minutes: Optional[float] = None) -> str:
    """07: the plan's size, the study's findings, and what its comparisons can and cannot say.

    ``train_minutes``: the summed time of the distinct runs (training and evaluation) when they were made.
    """
    seeds = list(plan["seeds"])
    threads = plan.get("threads")
    sizes = (f"Plan: {len(seeds)} seed(s) {seeds}, {plan['epochs']} epochs, {plan['n_train']}/{plan['n_val']}/"
             f"{plan['n_test']} videos, hidden size {plan['hidden_size']}; ambiguity {list(plan['ambiguity'])}, "
             f"noise {list(plan['noise'])}"
             + (f"; {threads} CPU thread(s) per run" if threads else "") + ".")
    if train_minutes is not None:
        sizes += (f" Its distinct runs took {train_minutes:.1f} minutes to train and evaluate when they were made "
                  f"(on the machine that made the cache, under its load then).")
    caveat = ("With a single seed no comparison has an interval: no difference here is evidence, whichever way it "
              "points." if len(seeds) < 2 else
              "Every comparison pairs the runs of the same seed and takes a Student-t interval over seeds; "
              "\"cannot be told apart\" means the interval includes 0, not that the models are equal.")
    return _bullets([sizes, *findings, caveat])


# ----------------------------------------------------------------------------- the results file


# (notebook, summary key, what it is, format) of the single numbers in the headline table.
_SCALAR_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("03_evaluate", "median_rank_fused", "median rank of the right video (fused)", "{:.0f}"),
    ("02_train", "best_epoch", "best validation epoch", "{}"),
    ("02_train", "seconds_per_epoch", "seconds per training epoch (mean; machine-dependent)", "{:.1f}"),
    ("05_word_confidence", "filler_auc", "word confidence, AUC content vs filler words (0.5 = none)", "{:.3f}"),
    ("04_uncertainty", "ambiguity_auc", "sigma, AUC ambiguous vs specific captions (0.5 = none)", "{:.3f}"),
)


# ----------------------------------------------------------------------------- the curated figures/ folder
