"""The sigma report: does a model's sigma separate labelled ambiguous items from specific ones?

RAL claims that the width of its Gaussians (sigma) measures how uncertain an instance is. This
module turns that claim into one number per collection and split, with an interval and with
baselines that need no sigma at all, so that a reader can tell "sigma tracks ambiguity" from
"sigma tracks something a caption's length already tells":

* a *label file* names items and a 0/1 label (1 = ambiguous), one ``ID<TAB>LABEL`` per line;
  the items are captions (caption ids) or videos (video ids);
* each item gets one scalar sigma, the mean of ``log sigma`` over dimensions, at one of three
  *levels*: ``caption`` (a caption taken alone as its support set), ``support_set`` (all captions
  of a video together, as in training) or ``video`` (the video's own Gaussian);
* the AUC of that scalar for the labels (P(ambiguous item scores higher), ties half) with a
  stratified percentile-bootstrap interval from a seeded generator;
* the same AUC for *baselines*, each oriented so that larger means "more uncertain" a priori:
  length (caption tokens; frames for videos), the negated margin between the best and the
  second-best fused score, and the entropy of the softmax over the item's fused scores.
  Support sets take the mean of their captions' caption baselines.
* sigma against each baseline: the difference of the two AUCs on the same items with a paired,
  label-stratified bootstrap interval (:func:`ralbook.stats.compare_aucs`). A baseline whose AUC is
  below 0.5 separates the labels the other way round; it is compared in that informative direction
  (1 - AUC) and the text says so. Sigma is never flipped: its direction is the claim under test.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection as CollectionT, Optional, Sequence

import numpy as np

from ralbook import stats
from ralbook.errors import DataError, RalbookError, shorten
from ralbook.retrieval.evaluate import evaluate
from ralbook.retrieval.metrics import read_relevant_file
from ralbook.studies.analysis import auc, collect_distributions, sigma_summary


LEVELS: tuple[str, ...] = ("caption", "support_set", "video")
LABEL_KINDS = {"caption": "caption", "support_set": "video", "video": "video"}  # level -> id kind of its labels
# Softmax temperature of the entropy baseline: the inverse of the scale (32) of the training's
# negative-aware loss, so the softmax is about as peaked as the one the model was trained with.
DEFAULT_TEMPERATURE = 1.0 / 32.0
DEFAULT_BOOTSTRAP = 2000


# ----------------------------------------------------------------------------- label files


@dataclass
class Labels:
    """0/1 labels of one kind of item (``caption`` or ``video``), in file order."""

    kind: str
    ids: list[str]
    values: np.ndarray  # (n,) int, 1 = ambiguous
    path: str

    @property
    def n_pos(self) -> int:
        return int(self.values.sum())

    @property
    def n_neg(self) -> int:
        return int(len(self.values) - self.values.sum())


def read_labels(path: str | Path, caption_ids: CollectionT[str], video_ids: CollectionT[str],
                split: str = "") -> Labels:
    """Parse ``ID<TAB>LABEL`` lines (blank lines and ``#`` comments skipped) against the split's ids.

    Every error names the file and the line: a line that is not two tab-separated fields, a label
    other than 0/1, an id that is neither a caption nor a video of the split, a file mixing the
    two kinds, an id labelled twice, and a file without both labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    where = f" of split {split}" if split else ""
    kind: Optional[str] = None
    first_line = 0
    seen: dict[str, int] = {}
    ids: list[str] = []
    values: list[int] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"label file {path} line {number}: expected 'ID<TAB>LABEL' (label 1 = ambiguous, "
                            f"0 = specific), got {shorten(line)}")
        item, label = fields[0].strip(), fields[1].strip()
        if label not in ("0", "1"):
            raise DataError(f"label file {path} line {number}: label of {shorten(item)} must be 0 or 1, "
                            f"got {shorten(label)}")
        this = "caption" if item in caption_ids else "video" if item in video_ids else None
        if this is None:
            raise DataError(f"label file {path} line {number}: {shorten(item)} is neither a caption id nor a "
                            f"video id{where}")
        if kind is None:
            kind, first_line = this, number
        elif this != kind:
            raise DataError(f"label file {path} line {number}: {shorten(item)} is a {this} id but line "
                            f"{first_line} holds a {kind} id; one file labels one kind of item")
        if item in seen:
            raise DataError(f"label file {path} line {number}: {shorten(item)} is already labelled on line "
                            f"{seen[item]}")
        seen[item] = number
        ids.append(item)
        values.append(int(label))
    if kind is None:
        raise DataError(f"label file {path}: no labels (expected lines 'ID<TAB>LABEL')")
    arr = np.asarray(values, dtype=int)
    if arr.min() == arr.max():
        raise DataError(f"label file {path}: needs both labels 0 and 1, got only {arr[0]} ({arr.size} lines)")
    return Labels(kind, ids, arr, str(path))


def write_labels(path: str | Path, labels: dict[str, int]) -> Path:
    """Write ``ID<TAB>LABEL`` lines (the format :func:`read_labels` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}\t{int(v)}\n" for k, v in labels.items()), encoding="utf-8", newline="\n")
    return path


# ----------------------------------------------------------------------------- statistics


def bootstrap_auc_interval(positive: np.ndarray, negative: np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP,
                           seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUC over ``n_boot`` stratified bootstrap resamples.

    Stratified: each resample draws the positives and the negatives with replacement separately
    (positives first, then negatives, from ``numpy.random.default_rng(seed)``), so every resample
    holds both groups at their observed sizes.
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        p = pos[rng.integers(0, pos.size, pos.size)]
        n = neg[rng.integers(0, neg.size, neg.size)]
        values[b] = auc(p, n)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def softmax_entropy(scores: np.ndarray, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Entropy (nats) of softmax(row / temperature) of each row of (n, m) scores."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=1)


def top_margin(scores: np.ndarray) -> np.ndarray:
    """Best minus second-best score of each row of (n, m) scores (0 for a single column)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[1] < 2:
        return np.zeros(s.shape[0])
    top2 = -np.partition(-s, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def mean_log_sigma(log_sigma: Any) -> np.ndarray:
    """The scalar sigma of each row: mean over dimensions of log sigma, (N, d) -> (N,)."""
    return np.log(sigma_summary(log_sigma))


# ----------------------------------------------------------------------------- per-item scalars


@dataclass
class ItemScalars:
    """Scalar sigma and baseline scores of every item of one level (ids in a fixed order)."""

    level: str
    ids: list[str]
    sigma: np.ndarray                  # (n,) mean log sigma
    baselines: dict[str, np.ndarray]   # name -> (n,), larger = more uncertain a priori


def item_scalars(level: str, dist: Any, scores: np.ndarray, score_caps: Sequence[str], score_videos: Sequence[str],
                 n_frames: Optional[Sequence[int]] = None,
                 temperature: float = DEFAULT_TEMPERATURE) -> ItemScalars:
    """Scalars of ``level`` from MSRA distributions (:class:`ralbook.analysis.DistributionSet`) and
    fused scores (captions ``score_caps`` x videos ``score_videos``).

    Videos need ``n_frames`` (in ``dist.video_ids`` order) for their length baseline; their margin and
    entropy come from the video's column of scores (how sharply it picks its captions).
    """
    if level not in LEVELS:
        raise RalbookError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    scores = np.asarray(scores, dtype=np.float64)
    cap_row = {c: i for i, c in enumerate(score_caps)}
    missing = [c for c in dist.cap_ids if c not in cap_row]
    if missing:
        raise DataError(f"{len(missing)} captions have sigmas but no scores, e.g. {shorten(missing[0])}")
    rows = scores[[cap_row[c] for c in dist.cap_ids]]
    caption = {"length": np.asarray(dist.query_length, dtype=np.float64), "neg_margin": -top_margin(rows),
               "entropy": softmax_entropy(rows, temperature)}
    if level == "caption":
        return ItemScalars(level, list(dist.cap_ids), mean_log_sigma(dist.query_log_sigma), caption)
    if level == "support_set":
        counts = np.bincount(dist.query_video, minlength=len(dist.video_ids)).astype(np.float64)
        means = {k: np.bincount(dist.query_video, weights=v, minlength=len(dist.video_ids)) / np.maximum(counts, 1)
                 for k, v in caption.items()}
        return ItemScalars(level, list(dist.video_ids), mean_log_sigma(dist.support_log_sigma), means)
    if n_frames is None:
        raise ValueError("video level needs n_frames")
    col = {v: j for j, v in enumerate(score_videos)}
    columns = scores[:, [col[v] for v in dist.video_ids]].T
    return ItemScalars(level, list(dist.video_ids), mean_log_sigma(dist.video_log_sigma),
                       {"length": np.asarray(n_frames, dtype=np.float64), "neg_margin": -top_margin(columns),
                        "entropy": softmax_entropy(columns, temperature)})


# ----------------------------------------------------------------------------- the report


LEVEL_UNITS = {"caption": "captions", "support_set": "support sets", "video": "videos"}


def report(items: ItemScalars, labels: Labels, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """AUC of the scalar sigma for the labels, its bootstrap interval, the baselines' AUCs, and sigma
    against each baseline on the same items (paired difference of AUCs).

    Keys: ``auc``, ``auc_ci`` ([low, high]), ``n_pos``, ``n_neg``, ``baselines`` ({name: auc}, as scored),
    ``level``, and ``comparisons`` ({name: :meth:`ralbook.stats.Comparison.to_dict`} of AUC(sigma) -
    AUC(baseline), the baseline in its informative direction). Labelled ids the level does not hold
    are an error naming the label file.
    """
    if labels.kind != LABEL_KINDS[items.level]:
        raise DataError(f"label file {labels.path} labels {labels.kind}s, but level {items.level!r} needs "
                        f"{LABEL_KINDS[items.level]} labels")
    index = {k: i for i, k in enumerate(items.ids)}
    absent = [k for k in labels.ids if k not in index]
    if absent:
        raise DataError(f"label file {labels.path}: {len(absent)} labelled {labels.kind}s were not analysed, "
                        f"e.g. {shorten(absent[0])}")
    at = np.asarray([index[k] for k in labels.ids])
    positive = labels.values == 1

    def split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = values[at]
        return v[positive], v[~positive]

    pos, neg = split(items.sigma)
    low, high = bootstrap_auc_interval(pos, neg, n_boot, seed)
    unit = LEVEL_UNITS[items.level]
    comparisons = {name: stats.compare_aucs(items.sigma[at], v[at], labels.values, name_a="sigma", name_b=name,
                                            informative_direction="b", unit=unit, n_boot=n_boot,
                                            seed=seed).to_dict()
                   for name, v in items.baselines.items()}
    return {"level": items.level, "auc": auc(pos, neg), "auc_ci": [low, high], "n_pos": labels.n_pos,
            "n_neg": labels.n_neg, "baselines": {name: auc(*split(v)) for name, v in items.baselines.items()},
            "comparisons": comparisons}


def _comparisons(result: dict[str, Any]) -> dict[str, stats.Comparison]:
    """The report's paired comparisons as :class:`ralbook.stats.Comparison` objects (empty for a report
    written before they existed)."""
    return {name: stats.Comparison.from_dict(c) for name, c in result.get("comparisons", {}).items()}


def format_report(result: dict[str, Any], title: str = "") -> str:
    """The report as a short fixed-width table: sigma first, then the baselines with the paired
    difference sigma - baseline and its interval (a baseline read the other way round is marked)."""
    lines = [title] if title else []
    lines.append(f"level {result['level']}: {result['n_pos']} items labelled 1 (ambiguous) vs {result['n_neg']} "
                 "labelled 0 (AUC 0.5 = no relation; larger score = predicted label 1)")
    comparisons = _comparisons(result)
    lines.append(f"{'score':<14}{'AUC':>7}   {'95% interval':<16}  {'compared':>8}  {'sigma - score':>13}   "
                 "95% interval (paired)")
    low, high = result["auc_ci"]
    lines.append(f"{'sigma':<14}{result['auc']:>7.3f}   [{low:.3f}, {high:.3f}]")
    flipped = []
    for name, value in result["baselines"].items():
        c = comparisons.get(name)
        if c is None:
            lines.append(f"{name:<14}{value:>7.3f}")
            continue
        mark = "*" if c.flipped_b else ""
        flipped += [name] if c.flipped_b else []
        lines.append(f"{name:<14}{value:>7.3f}   {'':<16}  {f'{c.value_b:.3f}{mark}':>8}  {c.estimate:>+13.3f}   "
                     f"[{c.low:+.3f}, {c.high:+.3f}]")
    if flipped:
        lines.append(f"* read the other way round (AUC below 0.5): compared as 1 - AUC ({', '.join(flipped)})")
    return "\n".join(lines)


@dataclass
class ModelOutputs:
    """What a report needs from a model on one split: distributions and the kept fused scores."""

    dist: Any
    scores: np.ndarray
    score_caps: list[str]
    score_videos: list[str]
    n_frames: list[int]
    metrics: dict[str, dict[str, float]]   # the ranking's R@K (with ``relevant`` when given)


def model_outputs(model: Any, collection: Any, split: str, cfg: Any = None, batch_size: int = 32,
                  relevant: Any = None, video_ids: Optional[Sequence[str]] = None,
                  progress: bool = False) -> ModelOutputs:
    """Run the MSRA heads and the ranking once over a split (reusing analysis and evaluate).

    ``relevant`` (file or dict caption id -> videos) only changes the recalls, not the scores.
    ``video_ids``: a subset of the split's videos (their captions ranked against them only).
    """

    video_ids = list(video_ids) if video_ids is not None else collection.videos(split)
    chosen = set(video_ids)
    cap_ids = [c for c, _ in collection.captions(split) if collection.video_of(c) in chosen]
    dist = collect_distributions(model, collection, video_ids, split, batch_size=batch_size, progress=progress)
    if isinstance(relevant, (str, Path)):

        relevant = read_relevant_file(relevant)
    if relevant is not None:  # keep only the videos ranked here
        relevant = {c: [v for v in vs if v in chosen] for c, vs in relevant.items() if c in set(cap_ids)}
    result = evaluate(model, collection, split, cfg, video_ids=video_ids, cap_ids=cap_ids, keep_scores=True,
                      relevant=relevant, progress=progress)
    return ModelOutputs(dist, result.scores["fused"], list(result.cap_ids), list(result.video_ids),
                        [collection.n_frames(v) for v in dist.video_ids], result.metrics)


def sigma_report(outputs: ModelOutputs, labels: Labels, level: Optional[str] = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                 temperature: float = DEFAULT_TEMPERATURE) -> dict[str, Any]:
    """:func:`report` for a model's outputs; ``level`` defaults to caption (caption labels) or video."""
    level = level or ("caption" if labels.kind == "caption" else "video")
    items = item_scalars(level, outputs.dist, outputs.scores, outputs.score_caps, outputs.score_videos,
                         outputs.n_frames, temperature)
    return report(items, labels, n_boot, seed)


def subset_labels(labels: Labels, ids: CollectionT[str]) -> Optional[Labels]:
    """The labels of the items in ``ids`` only (None when fewer than both classes remain)."""
    keep = [i for i, k in enumerate(labels.ids) if k in ids]
    values = labels.values[keep]
    if values.size == 0 or values.min() == values.max():
        return None
    return Labels(labels.kind, [labels.ids[i] for i in keep], values, labels.path)


def baseline_label(c: stats.Comparison) -> str:
    """How a baseline is named in a sentence: "entropy (AUC 0.738)", or for one compared in its informative
    direction "length, read the other way round (AUC 0.575)"."""
    if c.flipped_b:
        return f"{c.b}, read the other way round (AUC {c.value_b:.3f}; as scored {1.0 - c.value_b:.3f})"
    return f"{c.b} (AUC {c.value_b:.3f})"


def versus_baseline(c: stats.Comparison) -> str:
    """Sigma against one baseline, from the paired interval of the AUC difference: better, worse, or not
    distinguishable at this size (then how many items would resolve it). The baseline is named with the
    direction it was compared in, so the flip is stated once, in the label."""
    plain = dataclasses.replace(c, flipped_b=False)  # the label says the flip; describe need not repeat it
    return f"Against {baseline_label(c)}: {stats.describe(plain, what='AUC')}"


def strongest_baseline(comparisons: dict[str, stats.Comparison]) -> Optional[str]:
    """The baseline with the highest AUC in its informative direction (None when there is none)."""
    return max(comparisons, key=lambda k: comparisons[k].value_b) if comparisons else None


def interpret(reports: dict[str, dict[str, Any]], probe: Optional[float] = None) -> list[str]:
    """Plain sentences computed from sigma reports (name -> report): does sigma's interval exclude 0.5,
    and how does sigma compare with the strongest sigma-free baseline and with the others (paired
    intervals of the AUC differences, :func:`ralbook.stats.describe`)?"""
    lines = []
    if probe is not None:
        lines.append(f"The inputs carry the ambiguity: a logistic probe on raw token statistics (no model) separates "
                     f"ambiguous from specific held-out captions with AUC {probe:.3f}.")
    for name, r in reports.items():
        low, high = r["auc_ci"]
        if low > 0.5:
            relation = "higher for the label-1 items: the interval excludes 0.5"
        elif high < 0.5:
            relation = "lower for the label-1 items (the opposite of the claim): the interval excludes 0.5"
        else:
            relation = "not related to the labels at this sample size: the interval includes 0.5"
        head = (f"{name} ({r['level']} level, {r['n_pos']} vs {r['n_neg']}): sigma AUC {r['auc']:.3f} "
                f"[{low:.3f}, {high:.3f}], so sigma is {relation}.")
        comparisons = _comparisons(r)
        best = strongest_baseline(comparisons)
        if best is None:
            given = ", ".join(f"{b} {v:.3f}" for b, v in r.get("baselines", {}).items())
            lines.append(head + (f" Baseline AUCs {given}; this report holds no paired comparison with them, so "
                                 "no verdict is drawn (rerun the sigma report)." if given else ""))
            continue
        strongest = dataclasses.replace(comparisons[best], flipped_b=False)
        others = [versus_baseline(c) for b, c in comparisons.items() if b != best]
        behind = (f" On these items sigma's AUC is the lower of the two, by {-strongest.estimate:.3f}."
                  if strongest.verdict == "undecided" and strongest.estimate < 0 else "")
        lines.append(" ".join([head, f"The strongest sigma-free baseline is {baseline_label(comparisons[best])}: "
                               f"{stats.describe(strongest, what='AUC')}{behind}", *others]))
    return lines


def labels_for_split(path: str | Path, collection: Any, split: str) -> Labels:
    """:func:`read_labels` against the captions and videos of one split of a collection."""
    return read_labels(path, {c for c, _ in collection.captions(split)}, set(collection.videos(split)), split)


# ----------------------------------------------------------------------------- command line


# ----------------------------------------------------------------------------- an input probe


def text_statistics(features: Sequence[np.ndarray]) -> np.ndarray:
    """Raw statistics of each caption's token rows (L, Dt), no model involved: (n, 5).

    Columns: mean, max, min and standard deviation over tokens of a token row's variance over
    feature dimensions, and the number of tokens. What a probe can read from the input alone.
    """
    out = np.empty((len(features), 5))
    for i, rows in enumerate(features):
        var = np.asarray(rows, dtype=np.float64).var(axis=1)
        out[i] = (var.mean(), var.max(), var.min(), var.std(), len(var))
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iterations: int = 100) -> np.ndarray:
    """Weights (bias last) of a ridge-regularised logistic regression, by Newton's method.

    Features are used as given (standardise them first); deterministic, no solver dependency.
    """
    x = np.column_stack([np.asarray(x, dtype=np.float64), np.ones(len(x))])
    y = np.asarray(y, dtype=np.float64)
    w = np.zeros(x.shape[1])
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (p - y) + penalty @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess + 1e-9 * np.eye(x.shape[1]), grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def probe_auc(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """AUC on held-out items of a logistic probe fitted on training items (features standardised on train)."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    w = fit_logistic((train_x - mean) / std, train_y)
    score = ((test_x - mean) / std) @ w[:-1]
    positive = np.asarray(test_y) == 1
    return auc(score[positive], score[~positive])


def caption_probe_auc(collection: Any, truth: Any, train_split: str = "train", test_split: str = "test") -> float:
    """:func:`probe_auc` of ambiguity from :func:`text_statistics`, trained on one split's captions and
    tested on another's (the generator's ground truth gives the labels)."""
    def data(split: str) -> tuple[np.ndarray, np.ndarray]:
        caps = [c for c, _ in collection.captions(split) if c in truth.captions]
        return (text_statistics([collection.text_features(c) for c in caps]),
                np.array([truth.captions[c].ambiguity for c in caps]))

    return probe_auc(*data(train_split), *data(test_split))
