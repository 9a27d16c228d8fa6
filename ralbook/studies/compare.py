"""Runs compared: metrics side by side, paired differences over the same queries, seeds grouped.

Why one function for this: reading two ``test_metrics.json`` tables says nothing about whether a gap of
1.5 SumR is more than query noise. :func:`compare_runs` puts every run's clip / frame / fused R@1/5/10/100
and SumR side by side and, for each run against the first, the paired bootstrap difference over the same
queries (:func:`ralbook.stats.compare_rankings`). Runs whose settings differ only by ``train.seed`` form a
seed group: each group gets its mean and Student-t interval over seeds (:func:`ralbook.stats.single_mean`)
and each group is compared with the first one (:func:`ralbook.stats.compare_seeds`: paired when both groups
ran the same seeds, Welch otherwise). Every sentence comes from :func:`ralbook.stats.describe`.

Per-query ranks come from the run's ``test_metrics.json`` when it stores them for the requested split
(runs trained by this version do), else from evaluating the run's ``best.pt`` on the split. Runs on
different collections, features, splits or caption lists are refused: their queries do not pair.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ralbook import stats
from ralbook.errors import DataError, RalbookError
from ralbook.retrieval.evaluate import SCORE_KINDS, evaluate
from ralbook.retrieval.metrics import recall_metrics
from ralbook.training.rundir import BEST_FILE, CONFIG_FILE, TEST_FILE, open_run, read_run_config

PathLike = Union[str, Path]
METRICS: tuple[str, ...] = ("R@1", "R@5", "R@10", "R@100", "SumR")
# settings that say where or how fast a run ran, not what it is: runs differing only in these (and the
# seed) are seeds of one configuration
NOT_A_SETTING: tuple[tuple[str, str], ...] = (("data", "data_root"), ("data", "num_workers"), ("train", "device"))


@dataclass
class RunRanks:
    """One run's per-query ranks on a split: what a comparison pairs."""

    name: str
    run_dir: Path
    config: dict[str, Any]
    split: str
    cap_ids: list[str]
    n_videos: int
    ranks: dict[str, np.ndarray]  # kind -> (Nq,) 1-based ranks
    metrics: dict[str, dict[str, float]]
    source: str  # where the ranks come from: the stored file or an evaluation of best.pt

    @property
    def seed(self) -> Optional[int]:
        return self.config.get("train", {}).get("seed")

    @property
    def collection(self) -> str:
        data = self.config.get("data", {})
        return f"{data.get('collection')}/{data.get('feature')}"


@dataclass
class SeedGroup:
    """Runs whose settings differ only by the seed; ``estimates[kind][metric]`` is the mean over seeds."""

    name: str
    runs: list[str]
    seeds: list[Optional[int]]
    estimates: dict[str, dict[str, stats.Estimate]] = field(default_factory=dict)


@dataclass
class RunComparison:
    """Everything ``ralbook compare`` reports; ``differences`` are run i vs the first run (paired over the
    queries), ``group_differences`` group j vs the first group (over seeds)."""

    split: str
    runs: list[RunRanks]
    differences: list[stats.Comparison]
    groups: list[SeedGroup]
    group_differences: list[stats.Comparison]
    n_boot: int
    seed: int

    def difference(self, run: str, kind: str = "fused", metric: str = "SumR") -> stats.Comparison:
        """The paired difference ``run - first run`` on ``kind`` ``metric``."""
        for c in self.differences:
            if c.a == run and c.metric == f"{kind} {metric}":
                return c
        raise KeyError(f"no difference for run {run!r} on {kind} {metric}")


# ----------------------------------------------------------------------------- loading


def _stored_ranks(run_dir: Path, split: str) -> Optional[dict[str, Any]]:
    """test_metrics.json when it holds per-query ranks of ``split`` (older runs store metrics only)."""
    path = run_dir / TEST_FILE
    if split != "test" or not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err
    if stored.get("split") != split or "ranks" not in stored or "cap_ids" not in stored:
        return None
    return stored


def _settings(run_dir: Path) -> dict[str, Any]:
    return read_run_config(run_dir).to_dict()


def load_ranks(run_dir: PathLike, split: str = "test", *, name: Optional[str] = None, reuse: bool = True,
               device: str = "cpu", data_root: str = "", progress: bool = False) -> RunRanks:
    """A run's per-query ranks on ``split``: stored ones (``reuse`` and test_metrics.json has them), else an
    evaluation of its best.pt (``data_root`` overrides where the collection lives)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RalbookError(f"{run_dir} is not a run directory: it holds no {CONFIG_FILE}")
    name = name or run_dir.name
    stored = _stored_ranks(run_dir, split) if reuse else None
    if stored is not None:
        ranks = {k: np.asarray(v, dtype=np.int64) for k, v in stored["ranks"].items()}
        n_q = len(stored["cap_ids"])
        bad = [k for k, v in ranks.items() if v.shape != (n_q,)]
        if bad or set(ranks) != set(SCORE_KINDS):
            raise DataError(f"{run_dir / TEST_FILE}: expected ranks of {', '.join(SCORE_KINDS)} for each of its "
                            f"{n_q} captions, got kinds {sorted(ranks)} (wrong length: {bad or 'none'})")
        return RunRanks(name, run_dir, _settings(run_dir), split, list(stored["cap_ids"]), int(stored["n_videos"]),
                        ranks, stored["metrics"], f"per-query ranks stored in {TEST_FILE}")
    if not (run_dir / BEST_FILE).is_file():
        raise RalbookError(f"{run_dir} holds no {BEST_FILE} to evaluate on {split!r}")
    cfg, model, collection = open_run(run_dir, device=device, data_root=data_root)
    result = evaluate(model, collection, split, cfg, progress=progress, source=f"checkpoint {run_dir / BEST_FILE}")
    return RunRanks(name, run_dir, _settings(run_dir), split, list(result.cap_ids), len(result.video_ids),
                    {k: np.asarray(v, dtype=np.int64) for k, v in result.ranks.items()}, result.metrics,
                    f"{BEST_FILE} evaluated on {split}")


def run_names(run_dirs: Sequence[PathLike]) -> list[str]:
    """Short unique labels: the folder name, else the last two path parts, else the whole path."""
    paths = [Path(p) for p in run_dirs]
    for depth in (1, 2):
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        raise RalbookError(f"the same run is listed twice: {', '.join(names)}")
    return names


def check_pairable(runs: Sequence[RunRanks]) -> None:
    """Refuse runs whose queries do not pair: another collection or feature, split or caption list."""
    first = runs[0]
    for run in runs[1:]:
        if run.collection != first.collection:
            raise DataError(f"cannot compare {run.name} with {first.name}: {run.name} is on collection "
                            f"{run.collection}, {first.name} on {first.collection} (collection/feature)")
        if run.split != first.split:
            raise DataError(f"cannot compare {run.name} with {first.name}: split {run.split!r} vs {first.split!r}")
        if run.cap_ids != first.cap_ids or run.n_videos != first.n_videos:
            raise DataError(f"cannot compare {run.name} with {first.name} on {first.split}: they ranked different "
                            f"queries or videos ({len(run.cap_ids)} queries x {run.n_videos} videos vs "
                            f"{len(first.cap_ids)} x {first.n_videos}, or another caption order)")


# ----------------------------------------------------------------------------- seeds


def _seedless(config: dict[str, Any]) -> str:
    """The settings with the seed and the machine-only keys removed, as a comparable string."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    out.get("train", {}).pop("seed", None)
    for section, key in NOT_A_SETTING:
        out.get(section, {}).pop(key, None)
    return json.dumps(out, sort_keys=True)


def group_by_seed(runs: Sequence[RunRanks]) -> list[list[int]]:
    """Indices of runs whose settings are equal but for the seed (in order of first appearance)."""
    groups: "OrderedDict[str, list[int]]" = OrderedDict()
    for i, run in enumerate(runs):
        groups.setdefault(_seedless(run.config), []).append(i)
    return list(groups.values())


def _group_name(runs: Sequence[RunRanks], members: list[int], k: int) -> str:
    parents = {runs[i].run_dir.resolve().parent.name for i in members}
    if len(members) > 1 and len(parents) == 1:
        return f"{parents.pop()} ({len(members)} seeds)"
    if len(members) == 1:
        return runs[members[0]].name
    return f"group {k + 1} ({len(members)} seeds)"


def _seed_values(run: RunRanks, kind: str, metric: str) -> float:
    return float(recall_metrics(run.ranks[kind])[metric])


# ----------------------------------------------------------------------------- the comparison


def compare_ranks(runs: Sequence[RunRanks], n_boot: int = stats.N_BOOT, seed: int = 0,
                  level: float = stats.LEVEL) -> RunComparison:
    """Compare already-loaded runs (the first is the reference); see the module docstring."""
    if len(runs) < 1:
        raise RalbookError("compare needs at least one run")
    check_pairable(runs)
    first = runs[0]
    differences = []
    for run in runs[1:]:
        for kind in SCORE_KINDS:
            for metric in METRICS:
                c = stats.compare_rankings(run.ranks[kind], first.ranks[kind], metric, name_a=run.name,
                                           name_b=first.name, n_boot=n_boot, seed=seed, level=level)
                differences.append(dataclasses.replace(c, metric=f"{kind} {metric}"))  # as tables print it
    groups = []
    for k, members in enumerate(group_by_seed(runs)):
        group = SeedGroup(_group_name(runs, members, k), [runs[i].name for i in members],
                          [runs[i].seed for i in members])
        for kind in SCORE_KINDS:
            group.estimates[kind] = {
                metric: stats.single_mean([_seed_values(runs[i], kind, metric) for i in members], name=group.name,
                                          metric=f"{kind} {metric}", unit="seeds", level=level)
                for metric in METRICS}
        groups.append(group)
    group_differences = []
    if len(groups) > 1:
        index = {run.name: run for run in runs}
        base = groups[0]
        for group in groups[1:]:
            # the same seeds in both groups: seed i of one pairs with seed i of the other
            paired = sorted(map(str, group.seeds)) == sorted(map(str, base.seeds)) \
                and len(set(group.seeds)) == len(group.seeds)
            for kind in SCORE_KINDS:
                for metric in METRICS:
                    a = _by_seed(group, index, kind, metric)
                    b = _by_seed(base, index, kind, metric)
                    c = stats.compare_seeds([v for _, v in a], [v for _, v in b], paired=paired, name_a=group.name,
                                            name_b=base.name, metric=f"{kind} {metric}", level=level)
                    group_differences.append(c)
    return RunComparison(first.split, list(runs), differences, groups, group_differences, n_boot, seed)


def _by_seed(group: SeedGroup, index: dict[str, RunRanks], kind: str, metric: str) -> list[tuple[str, float]]:
    """(seed, value) of each run of a group, ordered by seed (pairs seeds across groups)."""
    pairs = [(str(s), _seed_values(index[name], kind, metric)) for name, s in zip(group.runs, group.seeds)]
    return sorted(pairs, key=lambda p: p[0])


def compare_runs(run_dirs: Sequence[PathLike], split: str = "test", *, reuse: bool = True, device: str = "cpu",
                 data_root: str = "", n_boot: int = stats.N_BOOT, seed: int = 0, level: float = stats.LEVEL,
                 progress: bool = False) -> RunComparison:
    """Load (or evaluate) each run's per-query ranks on ``split`` and compare them (first run = reference)."""
    if not run_dirs:
        raise RalbookError("compare needs at least one run directory")
    names = run_names(run_dirs)
    runs = [load_ranks(d, split, name=n, reuse=reuse, device=device, data_root=data_root, progress=progress)
            for d, n in zip(run_dirs, names)]
    return compare_ranks(runs, n_boot=n_boot, seed=seed, level=level)


# ----------------------------------------------------------------------------- reports


def side_by_side(comp: RunComparison) -> list[dict[str, Any]]:
    """One row per run: name, seed, group, every ``kind metric`` value and, for later runs, the fused SumR
    difference to the first run with its interval."""
    group_of = {name: g.name for g in comp.groups for name in g.runs}
    rows = []
    for run in comp.runs:
        row: dict[str, Any] = {"run": run.name, "seed": run.seed, "seed group": group_of[run.name],
                               "queries": len(run.cap_ids), "videos": run.n_videos}
        for kind in SCORE_KINDS:
            values = recall_metrics(run.ranks[kind])
            for metric in METRICS:
                row[f"{kind} {metric}"] = float(values[metric])
        if run is comp.runs[0]:
            row.update({"fused SumR - first": 0.0, "low": None, "high": None, "verdict": "reference"})
        else:
            c = comp.difference(run.name)
            row.update({"fused SumR - first": c.estimate, "low": c.low, "high": c.high, "verdict": c.verdict})
        rows.append(row)
    return rows


def to_csv(comp: RunComparison) -> str:
    """The side-by-side table as CSV (one row per run; empty cells where a value does not exist)."""
    rows = side_by_side(comp)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(comp: RunComparison, kind: str = "fused", digits: int = 1) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``): one row per run with ``kind`` R@1..SumR and the
    SumR difference to the first run [interval]; then, for seed groups of 2 or more runs, mean +- half-width
    of the t interval over seeds."""
    if kind not in SCORE_KINDS:
        raise RalbookError(f"to_latex: kind must be one of {', '.join(SCORE_KINDS)}, got {kind!r}")
    level = f"{100 * stats.LEVEL:g}" if not comp.differences else f"{100 * comp.differences[0].level:g}"
    head = " & ".join(["Run", *METRICS, rf"$\Delta$SumR [{level}\% CI]"])
    lines = [f"% ralbook compare: {kind} scores on the {latex_escape(comp.split)} split; needs \\usepackage{{booktabs}}",
             r"\begin{tabular}{l" + "r" * len(METRICS) + "l}", r"\toprule", head + r" \\", r"\midrule"]
    for run in comp.runs:
        values = recall_metrics(run.ranks[kind])
        cells = [latex_escape(run.name), *[f"{values[m]:.{digits}f}" for m in METRICS]]
        if run is comp.runs[0]:
            cells.append("reference")
        else:
            c = comp.difference(run.name, kind, "SumR")
            cells.append(f"{c.estimate:+.{digits}f} [{c.low:.{digits}f}, {c.high:.{digits}f}]")
        lines.append(" & ".join(cells) + r" \\")
    seeded = [g for g in comp.groups if len(g.runs) > 1]
    if seeded:
        lines.append(r"\midrule")
        for g in seeded:
            cells = [latex_escape(f"{g.name}, mean")]
            for m in METRICS:
                e = g.estimates[kind][m]
                cells.append(f"{e.value:.{digits}f} $\\pm$ {(e.high - e.low) / 2:.{digits}f}")
            cells.append("")
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_json(comp: RunComparison) -> dict[str, Any]:
    """Everything, JSON-ready: runs (with where their ranks came from), differences, groups."""
    return {
        "split": comp.split, "n_boot": comp.n_boot, "bootstrap_seed": comp.seed,
        "runs": [{"name": r.name, "run_dir": str(r.run_dir.resolve()), "seed": r.seed, "source": r.source,
                  "n_queries": len(r.cap_ids), "n_videos": r.n_videos,
                  "metrics": {k: recall_metrics(r.ranks[k]) for k in SCORE_KINDS}} for r in comp.runs],
        "differences": [c.to_dict() for c in comp.differences],
        "seed_groups": [{"name": g.name, "runs": g.runs, "seeds": g.seeds,
                         "estimates": {k: {m: e.to_dict() for m, e in v.items()} for k, v in g.estimates.items()}}
                        for g in comp.groups],
        "group_differences": [c.to_dict() for c in comp.group_differences],
    }


def sentences(comp: RunComparison, metric: str = "SumR") -> list[str]:
    """One sentence per run against the first (each score kind) and per seed group, all through ralbook.stats."""
    out = []
    for c in comp.differences:
        if c.metric.endswith(f" {metric}"):
            out.append(stats.describe(c, what=f"{c.metric} on the {comp.split} split"))
    for g in comp.groups:
        if len(g.runs) > 1:
            out.append(stats.describe_estimate(g.estimates["fused"][metric], what=f"fused {metric} of {g.name}"))
    for c in comp.group_differences:
        if c.metric.endswith(f" {metric}"):
            out.append(stats.describe(c, what=f"{c.metric} on the {comp.split} split, over seeds"))
    return out


def seed_summary(comp: RunComparison) -> str:
    """Mean and spread over seeds (``train --seeds``): each run's fused metrics, then for each seed group the
    mean with its t interval and the seeds' standard deviation, worded by ralbook.stats."""
    lines = []
    for run in comp.runs:
        values = recall_metrics(run.ranks["fused"])
        lines.append(f"seed {run.seed}: fused " + "  ".join(f"{m} {values[m]:.1f}" for m in METRICS))
    for g in comp.groups:
        values = [_seed_values(next(r for r in comp.runs if r.name == name), "fused", "SumR") for name in g.runs]
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        lines.append(f"{g.name}: fused SumR standard deviation over seeds {sd:.2f}")
        lines += [stats.describe_estimate(g.estimates["fused"][m], what=f"fused {m} over seeds {g.seeds}")
                  for m in METRICS]
    return "\n".join(lines)


def format_comparison(comp: RunComparison) -> str:
    """The text ``ralbook compare`` prints: a fixed-width table per score kind, then the sentences."""
    width = max(len(r.name) for r in comp.runs) + 2
    lines = [f"{len(comp.runs)} run(s) on the {comp.split} split, {len(comp.runs[0].cap_ids)} queries x "
             f"{comp.runs[0].n_videos} videos; differences: run - {comp.runs[0].name}, paired bootstrap over the "
             f"queries ({comp.n_boot} resamples, seed {comp.seed})"]
    for kind in SCORE_KINDS:
        lines.append("")
        lines.append(f"{kind:<{width}}" + "".join(f"{m:>8}" for m in METRICS) + "   SumR - first [CI]")
        for run in comp.runs:
            values = recall_metrics(run.ranks[kind])
            diff = "reference" if run is comp.runs[0] else stats.summary_line(comp.difference(run.name, kind))
            lines.append(f"{run.name:<{width}}" + "".join(f"{values[m]:>8.1f}" for m in METRICS) + f"   {diff}")
    seeded = [g for g in comp.groups if len(g.runs) > 1]
    for g in seeded:
        lines.append("")
        e = g.estimates["fused"]
        lines.append(f"{g.name}: seeds {', '.join(str(s) for s in g.seeds)}; fused mean [t interval] "
                     + "  ".join(f"{m} {e[m].value:.1f} [{e[m].low:.1f}, {e[m].high:.1f}]" for m in METRICS))
    lines.append("")
    lines += ["What this shows: " + s if i == 0 else s for i, s in enumerate(sentences(comp))] or []
    return "\n".join(lines)


__all__ = ["METRICS", "RunRanks", "SeedGroup", "RunComparison", "load_ranks", "run_names", "check_pairable",
           "group_by_seed", "compare_ranks", "compare_runs", "side_by_side", "to_csv", "to_latex", "latex_escape",
           "to_json", "sentences", "seed_summary", "format_comparison"]
