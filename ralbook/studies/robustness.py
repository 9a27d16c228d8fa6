"""The robustness study behind notebook 07: RAL's claims under controlled ambiguity and noise.

RAL's paper claims better generalisation "under high-ambiguity and strong-noise conditions" and
that its sigma measures uncertainty. Real collections do not let one turn ambiguity or noise up
and down; generated ones do. The study:

* generates collections at several *ambiguity levels* (share of ambiguous captions) crossed with
  *visual noise levels* (a multiplier on the frame noise and drift of :mod:`ralbook.demo`);
* trains three models on each, for several seeds: RAL, RAL without MSRA, and GMMFormer v2 alone
  (no CSA frame branch, no word confidence, no MSRA);
* sweeps the L_PM and L_DA weights (each multiplied by x1, x10, x100) for RAL on one setting;
* records per run the test SumR (fused score, ranked against the multi-ground truth: an ambiguous
  caption counts as found when any video it truthfully describes ranks high) and the sigma report
  of :mod:`ralbook.uncertainty` (caption and support-set level, with its baselines).

Every run is cached under ``CACHE/runs/<hash>/`` where the hash covers the whole configuration
(generator parameters and version, model, loss and training settings; not paths or the device),
so a second call trains only what is missing. ``python -m ralbook robustness`` runs it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ralbook.config import LossConfig, build_config
from ralbook.data.demo import DemoParams, GENERATOR_VERSION, generate_from_params, label_file, relevant_file
from ralbook.errors import RalbookError
from ralbook.files import write_json
from ralbook.retrieval.metrics import chance_metrics, read_relevant_file
from ralbook.runtime.threads import configure_threads
from ralbook.stats import (Comparison, compare_seeds, describe, describe_detectable, single_mean,
                           summary_line)
from ralbook.studies.ablation import PAPER_GAIN  # the paper's headline gain (SumR), defined once
from ralbook.studies.uncertainty import labels_for_split, model_outputs, sigma_report
from ralbook.training.rundir import open_run
from ralbook.training.trainer import train


STUDY_VERSION = 2  # 2: the thread count is part of a run's key
# model name -> (label, config overrides)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "ral": ("RAL", {}),
    "ral_no_msra": ("RAL without MSRA", {"model.msra": False}),
    "gmmformer_v2": ("GMMFormer v2", {"model.csa": False, "model.word_confidence": False, "model.msra": False}),
}
# noise level -> multiplier on the generator's frame noise and drift
NOISE_LEVELS: dict[str, float] = {"low": 1.0, "high": 2.0}
SWEEP_TERMS: dict[str, str] = {"pm": "loss.pm_weight", "da": "loss.da_weight"}


@dataclass(frozen=True)
class StudyPlan:
    """What the study trains. Defaults: the full study (72 runs, 66 distinct: the sweep's x1 runs are grid runs).

    Sized for the 45-minute budget on two free CPU cores: the first sizing (120 training videos,
    4 epochs: 20 optimiser steps) left the models a few SumR points above a random ranking, so the
    budget went into training (240 videos, 8 epochs) and a larger test split (120 videos) for steadier
    recall. See the closing section of notebook 07 for the measured time.
    """

    ambiguity: tuple[float, ...] = (0.0, 0.25, 0.5)
    noise: tuple[str, ...] = ("low", "high")
    models: tuple[str, ...] = ("ral", "gmmformer_v2", "ral_no_msra")
    seeds: tuple[int, ...] = (0, 1, 2)
    loss_scales: tuple[float, ...] = (1.0, 10.0, 100.0)
    sweep_terms: tuple[str, ...] = ("pm", "da")
    sweep_ambiguity: float = 0.5
    sweep_noise: str = "low"
    n_train: int = 240
    n_val: int = 30
    n_test: int = 120
    data_seed: int = 2025
    epochs: int = 8
    hidden_size: int = 32
    batch_size: int = 24
    lr: float = 1e-3
    n_boot: int = 500
    threads: int = 0   # CPU threads per run; 0: chosen once from the machine's load when the study starts

    def validate(self) -> None:
        """Reject plans the study cannot run, naming the offending value."""
        problems = [f"unknown model {m!r} (choose from {sorted(MODELS)})" for m in self.models if m not in MODELS]
        problems += [f"unknown noise level {n!r} (choose from {sorted(NOISE_LEVELS)})"
                     for n in (*self.noise, self.sweep_noise) if n not in NOISE_LEVELS]
        problems += [f"unknown sweep term {t!r} (choose from {sorted(SWEEP_TERMS)})"
                     for t in self.sweep_terms if t not in SWEEP_TERMS]
        problems += [f"ambiguity {a} outside [0, 1]" for a in (*self.ambiguity, self.sweep_ambiguity)
                     if not 0 <= a <= 1]
        problems += [f"loss scale {s} must be > 0" for s in self.loss_scales if s <= 0]
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            problems.append(f"threads must be a whole number >= 0 (0: automatic), got {self.threads!r}")
        if not self.seeds or self.epochs < 1 or min(self.n_train, self.n_val, self.n_test) < 1:
            problems.append("need at least one seed, one epoch and one video per split")
        if problems:
            raise RalbookError("robustness plan: " + "; ".join(problems))

    def runs(self) -> list["RunSpec"]:
        """The grid (ambiguity x noise x model x seed), then the loss-weight sweep (RAL only).

        A sweep run at scale 1 is the grid's RAL run when the sweep setting is in the grid: the cache
        then serves it once.
        """
        grid = [RunSpec("grid", a, n, m, s) for a in self.ambiguity for n in self.noise for m in self.models
                for s in self.seeds]
        sweep = [RunSpec("sweep", self.sweep_ambiguity, self.sweep_noise, "ral", s, term, scale)
                 for term in self.sweep_terms for scale in self.loss_scales for s in self.seeds]
        return grid + sweep


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    group: str              # grid | sweep
    ambiguity: float
    noise: str
    model: str
    seed: int
    term: str = ""          # sweep only: pm | da
    scale: float = 1.0      # sweep only: multiplier on that loss weight


# ----------------------------------------------------------------------------- collections and configs


def demo_params(plan: StudyPlan, ambiguity: float, noise: str) -> Any:
    """Generator parameters of one study collection (the demo's, resized and with the level's noise)."""

    scale = NOISE_LEVELS[noise]
    return DemoParams(seed=plan.data_seed, n_train=plan.n_train, n_val=plan.n_val, n_test=plan.n_test,
                      ambiguous_fraction=ambiguity, frame_noise=DemoParams.frame_noise * scale,
                      drift=DemoParams.drift * scale)


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def ensure_collection(params: Any, cache: Path) -> Path:
    """Data root holding ``demo/`` generated from ``params`` (generated once, then reused)."""

    root = cache / "data" / digest({"generator": GENERATOR_VERSION, "params": dataclasses.asdict(params)})
    done = root / "done.json"
    if not done.is_file():
        if root.exists():
            shutil.rmtree(root)   # an interrupted generation
        generate_from_params(root, params)
        done.write_text(json.dumps(dataclasses.asdict(params)) + "\n")
    return root


def run_config(plan: StudyPlan, spec: RunSpec, data_root: Path, device: str = "cpu") -> Any:
    """The training configuration of one run: demo preset, plan sizes, the model's switches, the sweep's weight."""

    overrides: dict[str, Any] = {**MODELS[spec.model][1], "train.lr": plan.lr, "train.batch_size": plan.batch_size,
                                 "train.patience": plan.epochs + 1,
                                 "train.hard_negative_start_epoch": max(1, plan.epochs // 2 + 1)}
    if spec.term:
        key = SWEEP_TERMS[spec.term]
        overrides[key] = getattr(LossConfig(), key.split(".")[1]) * spec.scale
    return build_config("demo", data_root=str(data_root), epochs=plan.epochs, seed=spec.seed, device=device,
                        hidden_size=plan.hidden_size, overrides=overrides)


def run_key(params: Any, cfg: Any, plan: StudyPlan, threads: int) -> str:
    """Cache key of a run: generator version and parameters, the configuration without paths or device,
    the evaluation settings, and the CPU threads it trains with (the same seed on 1 and 2 threads gives
    different models: float sums are ordered differently)."""

    config = cfg.to_dict()
    config["data"] = {k: v for k, v in config["data"].items() if k != "data_root"}
    config["train"] = {k: v for k, v in config["train"].items() if k != "device"}
    return digest({"study": STUDY_VERSION, "generator": GENERATOR_VERSION, "params": dataclasses.asdict(params),
                   "config": config, "n_boot": plan.n_boot, "threads": int(threads)})


# ----------------------------------------------------------------------------- one run


def _label_file(data_root: Path, name: str) -> Optional[Path]:
    """A test label file of the collection, or None when it holds only one class (e.g. no ambiguity)."""

    path = data_root / "demo" / "GroundTruth" / label_file("test", name)
    values = {line.split("\t")[-1] for line in path.read_text(encoding="utf-8").splitlines() if line}
    return path if len(values) == 2 else None


def evaluate_run(run_dir: Path, data_root: Path, plan: StudyPlan, device: str = "cpu") -> dict[str, Any]:
    """Test SumR against the multi-ground truth and the sigma reports (caption and support-set level)."""

    cfg, model, coll = open_run(run_dir, device, str(data_root))
    outputs = model_outputs(model, coll, "test", cfg, relevant=data_root / "demo" / "GroundTruth" / relevant_file("test"))
    out: dict[str, Any] = {"metrics": outputs.metrics, "sumr": outputs.metrics["fused"]["SumR"]}
    for level, name in (("caption", "caption_ambiguous"), ("support_set", "support_ambiguous")):
        path = _label_file(data_root, name)
        if path is None:
            out[level] = None   # one class only: no AUC
            continue
        report = sigma_report(outputs, labels_for_split(path, coll, "test"), level, plan.n_boot, seed=0)
        if not cfg.model.msra:   # untrained sigma heads: keep the baselines only
            report["auc"], report["auc_ci"] = None, None
        out[level] = report
    return out


def chance_sumr(data_root: Path, n_test: int) -> float:
    """SumR of a random ranking of the test split against its multi-ground truth (the floor to beat).

    It rises with ambiguity: an ambiguous caption has many relevant videos, so a random list finds one.
    """

    relevant = read_relevant_file(data_root / "demo" / "GroundTruth" / relevant_file("test"))
    return chance_metrics([len(set(videos)) for videos in relevant.values()], n_test)["SumR"]


def study_threads(plan: StudyPlan) -> int:
    """The thread count every run of the study uses: the plan's, or (0) the machine's choice made once now
    (RALBOOK_THREADS, OMP_NUM_THREADS, else the cores not busy), then pinned so that no run changes it."""
    return configure_threads(plan.threads or None, announce=None).threads


def run_one(spec: RunSpec, plan: StudyPlan, cache: Path, device: str = "cpu",
            threads: Optional[int] = None) -> tuple[dict[str, Any], bool]:
    """(result row, trained?) of one run; a cached result is read back without training.

    ``threads``: the study's pinned count (default: :func:`study_threads`); it is part of the cache key.
    """
    threads = study_threads(plan) if threads is None else threads

    params = demo_params(plan, spec.ambiguity, spec.noise)
    data_root = ensure_collection(params, cache)
    cfg = run_config(plan, spec, data_root, device)
    key = run_key(params, cfg, plan, threads)
    folder = cache / "runs" / key
    result_file = folder / "result.json"
    row = {**dataclasses.asdict(spec), "key": key, "threads": threads,
           "chance_sumr": chance_sumr(data_root, params.n_test)}
    if result_file.is_file():
        return {**row, **json.loads(result_file.read_text())}, False
    if folder.exists():
        shutil.rmtree(folder)   # an interrupted run: start it again
    started = time.perf_counter()
    train(cfg, folder / "run", progress=False, threads=threads)
    result = {**evaluate_run(folder / "run", data_root, plan, device), "seconds": time.perf_counter() - started}
    write_json(result_file, result, indent=1)
    return {**row, **result}, True


@dataclass
class StudyResult:
    rows: list[dict[str, Any]]
    trained: int
    cached: int


def run_study(plan: StudyPlan, cache_dir: str | Path, device: str = "cpu", progress: bool = True) -> StudyResult:
    """Run (or read back) every run of the plan; one progress line per run."""
    from tqdm.auto import tqdm

    plan.validate()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    rows, trained = [], 0
    threads = study_threads(plan)
    specs = plan.runs()
    bar = tqdm(specs, desc="robustness runs", disable=not progress)
    for spec in bar:
        row, new = run_one(spec, plan, cache, device, threads)
        trained += new
        rows.append(row)
        bar.set_postfix_str(f"{spec.model} amb {spec.ambiguity} {spec.noise} seed {spec.seed}"
                            f"{f' {spec.term} x{spec.scale:g}' if spec.term else ''}: SumR {row['sumr']:.1f}"
                            f"{' (cached)' if not new else ''}")
    return StudyResult(rows, trained, len(rows) - trained)


def run_minutes(rows: Iterable[dict[str, Any]]) -> float:
    """Summed training + evaluation time of the distinct runs (a run served twice counts once), in minutes."""
    seconds = {r["key"]: r.get("seconds") or 0.0 for r in rows}
    return sum(seconds.values()) / 60.0


# ----------------------------------------------------------------------------- summaries


def _stats(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _auc_of(row: dict[str, Any], level: str, name: Optional[str] = None) -> Optional[float]:
    report = row.get(level)
    if not report:
        return None
    return report["auc"] if name is None else report["baselines"].get(name)


def summarise(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds (ddof 1) per setting: SumR, sigma AUCs, baseline AUCs."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["group"], r["ambiguity"], r["noise"], r["model"], r["term"], r["scale"]), []).append(r)
    out = []
    for (group, amb, noise, model, term, scale), members in groups.items():
        entry: dict[str, Any] = {"group": group, "ambiguity": amb, "noise": noise, "model": model,
                                 "label": MODELS[model][0], "term": term, "scale": scale,
                                 "seeds": sorted(m["seed"] for m in members)}
        entry["sumr_by_seed"] = {int(m["seed"]): m["sumr"] for m in sorted(members, key=lambda m: m["seed"])}
        entry["sumr_mean"], entry["sumr_std"], _ = _stats([m["sumr"] for m in members])
        entry["chance_sumr"], _, _ = _stats([m.get("chance_sumr") for m in members])
        for level in ("caption", "support_set"):
            entry[f"{level}_auc_mean"], entry[f"{level}_auc_std"], _ = _stats([_auc_of(m, level) for m in members])
            names = next((list(m[level]["baselines"]) for m in members if m.get(level)), [])
            for name in names:
                entry[f"{level}_{name}_auc_mean"], _, _ = _stats([_auc_of(m, level, name) for m in members])
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- comparisons (paired by seed)


PAPER_GAIN_LABEL = "the paper's headline gain of RAL over GMMFormer v2 (+9.7 SumR on TVR)"
# (a, b, what the comparison tests): the pairs the paper's claims concern.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("ral", "gmmformer_v2", "RAL against its backbone"),
    ("ral", "ral_no_msra", "MSRA on vs off"),
)


def seed_table(rows: Iterable[dict[str, Any]], key: str = "sumr", group: str = "grid"
               ) -> dict[tuple[float, str, str], dict[int, float]]:
    """(ambiguity, noise, model) -> {seed: value} of one group's runs (``key``: a row field, e.g. "sumr")."""
    out: dict[tuple[float, str, str], dict[int, float]] = {}
    for r in rows:
        if r["group"] == group and r.get(key) is not None:
            out.setdefault((r["ambiguity"], r["noise"], r["model"]), {})[int(r["seed"])] = float(r[key])
    return out


def _common(a: dict[int, float], b: dict[int, float]) -> tuple[list[float], list[float], list[int]]:
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds], seeds


def _setting(amb: float, noise: str) -> str:
    return f"noise {noise}, ambiguity {amb:g}"


# A model "near chance" has come less than this share of the way from a random ranking's SumR to a perfect
# ranking's (400): a difference between two such models says nothing about the method's claims.
NEAR_CHANCE_SHARE = 0.05
PERFECT_SUMR = 400.0


def _near_chance(values: Sequence[float], chance: float, detectable: float) -> bool:
    """A model is near chance when its mean gain over a random ranking is below :data:`NEAR_CHANCE_SHARE` of the
    room above chance, below the smallest difference the comparison detects, or when its SumR cannot be
    told from chance at all (t interval over seeds)."""
    est = single_mean(values, unit="seeds")
    gain = est.value - chance
    if gain < NEAR_CHANCE_SHARE * (PERFECT_SUMR - chance):
        return True
    if math.isfinite(est.low) and est.low <= chance:
        return True
    return math.isfinite(detectable) and gain < detectable


def pair_comparisons(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting and pair of :data:`PAIRS`: test SumR of a minus b, paired by seed (Student-t over seeds).

    Each entry: setting, the pair, the :class:`~ralbook.stats.Comparison`, the setting's chance SumR, each
    model's gain over chance and ``near_chance`` (both models near chance: no comparison is meaningful).
    """
    table = seed_table(rows)
    chance = {(r["ambiguity"], r["noise"]): r.get("chance_sumr") for r in rows if r["group"] == "grid"}
    out = []
    for (amb, noise) in dict.fromkeys((k[0], k[1]) for k in table):
        for a, b, purpose in PAIRS:
            if (amb, noise, a) not in table or (amb, noise, b) not in table:
                continue
            va, vb, seeds = _common(table[(amb, noise, a)], table[(amb, noise, b)])
            if not seeds:
                continue
            c = compare_seeds(va, vb, paired=True, name_a=MODELS[a][0], name_b=MODELS[b][0], metric="SumR")
            level = chance.get((amb, noise))
            near = level is not None and all(_near_chance(v, level, c.detectable) for v in (va, vb))
            out.append({"ambiguity": amb, "noise": noise, "a": a, "b": b, "purpose": purpose, "seeds": seeds,
                        "comparison": c, "chance_sumr": level, "near_chance": near,
                        "gain_a": None if level is None else float(np.mean(va)) - level,
                        "gain_b": None if level is None else float(np.mean(vb)) - level})
    return out


def trend_comparisons(rows: Sequence[dict[str, Any]], a: str = "ral", b: str = "gmmformer_v2"
                      ) -> list[dict[str, Any]]:
    """How the gap ``a - b`` moves: with ambiguity (highest vs lowest, per noise level) and with noise (high vs
    low, per ambiguity). Difference of differences per seed, paired by seed (Student-t over seeds)."""
    table = seed_table(rows)

    def gaps(amb: float, noise: str) -> dict[int, float]:
        x, y = table.get((amb, noise, a), {}), table.get((amb, noise, b), {})
        return {s: x[s] - y[s] for s in set(x) & set(y)}

    out = []
    noises = list(dict.fromkeys(k[1] for k in table))
    ambs = sorted({k[0] for k in table})
    label = f"{MODELS[a][0]} - {MODELS[b][0]}"
    for axis, pairs in (("ambiguity", [((ambs[-1], n), (ambs[0], n)) for n in noises] if len(ambs) > 1 else []),
                        ("noise", [((m, "high"), (m, "low")) for m in ambs] if {"high", "low"} <= set(noises) else [])):
        for (hi, lo) in pairs:
            gh, gl, seeds = _common(gaps(*hi), gaps(*lo))
            if not seeds:
                continue
            name_hi, name_lo = (f"ambiguity {hi[0]:g}", f"ambiguity {lo[0]:g}") if axis == "ambiguity" else \
                               (f"noise {hi[1]}", f"noise {lo[1]}")
            c = compare_seeds(gh, gl, paired=True, name_a=f"the gap at {name_hi}", name_b=f"the gap at {name_lo}",
                              metric=f"SumR gap {label}")
            fixed = f"noise {hi[1]}" if axis == "ambiguity" else f"ambiguity {hi[0]:g}"
            out.append({"axis": axis, "fixed": fixed, "high": name_hi, "low": name_lo, "a": a, "b": b,
                        "seeds": seeds, "comparison": c})
    return out


def _run_seconds(rows: Sequence[dict[str, Any]]) -> Optional[float]:
    """Mean recorded seconds of one distinct run (training and evaluation), None when none was recorded."""
    seconds = [s for s in {r["key"]: r.get("seconds") for r in rows}.values() if s]
    return float(np.mean(seconds)) if seconds else None


def headline_reach(pairs: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Whether the study detects the paper's +9.7 SumR of RAL over GMMFormer v2, and a plan that would."""
    cs = [p["comparison"] for p in pairs if (p["a"], p["b"]) == ("ral", "gmmformer_v2")]
    if not cs:
        return []
    n = max(c.n for c in cs)
    finite = [c for c in cs if math.isfinite(c.detectable)]
    if not finite:
        return [f"With {n} seed(s) no comparison has an interval, so the study cannot detect "
                f"{PAPER_GAIN_LABEL}; at least 2 seeds per setting are needed, and their spread says how many more."]
    reach = sum(c.detects(PAPER_GAIN) for c in finite)
    lines = [f"Smallest difference RAL vs GMMFormer v2 this study detects (80% power, 5% two-sided, paired over "
             f"{n} seeds): {min(c.detectable for c in finite):.1f} to {max(c.detectable for c in finite):.1f} SumR "
             f"across its {len(cs)} settings; {PAPER_GAIN_LABEL} is within reach in {reach} of them."]
    if reach == len(cs):
        return lines
    needed = [c.needed_n(size=PAPER_GAIN) for c in finite]
    if any(k is None for k in needed):
        return lines
    seeds = max(needed)
    settings = len(cs)
    new_runs = settings * 2 * max(0, seeds - n)
    per_run = _run_seconds(rows)
    when = ""
    if per_run is not None:
        threads = sorted({int(r["threads"]) for r in rows if r.get("threads")})
        used = f", {'/'.join(map(str, threads))} thread(s)" if threads else ""
        when = (f", about {new_runs * per_run / 60:.0f} minutes at the {per_run / 60:.1f} minutes one run took "
                f"when this cache was made (on the machine that made it{used}; the default study was sized for two "
                f"free CPU cores)")
    lines.append(f"A setting that detects it in every setting: about {seeds} seeds per setting for RAL and GMMFormer "
                 f"v2 (the noisiest setting sets the count, seed noise as measured here): {new_runs} more runs"
                 f"{when}. A larger collection lowers the test-sample part of the spread but not the training part; "
                 f"how much it helps is not measured here (train one setting at a larger n_train / n_test over "
                 f"the same seeds to find out).")
    return lines


def _describe_pair(p: dict[str, Any]) -> str:
    c: Comparison = p["comparison"]
    setting = _setting(p["ambiguity"], p["noise"])
    if p["near_chance"]:
        return (f"{p['purpose']} at {setting}: {c.a} and {c.b} are only {p['gain_a']:.1f} and {p['gain_b']:.1f} "
                f"SumR above a random ranking ({p['chance_sumr']:.1f}; a perfect ranking: {PERFECT_SUMR:.0f}), each "
                f"less than {100 * NEAR_CHANCE_SHARE:g}% of the room above chance, than the smallest difference this "
                f"design detects ({c.detectable:.1f}), or not distinguishable from chance: no comparison between "
                f"them is meaningful here.")
    return f"{p['purpose']} at {setting}: {describe(c, what='test SumR')}"


def _describe_trend(t: dict[str, Any]) -> str:
    c: Comparison = t["comparison"]
    label = f"{MODELS[t['a']][0]} - {MODELS[t['b']][0]}"
    numbers = f"{summary_line(c)}, {c.method}"
    if not math.isfinite(c.se):
        return (f"How the SumR gap {label} moves with {t['axis']} ({t['fixed']}, {t['high']} against {t['low']}): "
                f"{c.note or 'no interval'}; difference {c.estimate:+.1f}.")
    if c.verdict == "undecided":
        needed = c.needed_n()
        more = f"; about {needed} seeds would resolve a change of this size" if needed else ""
        return (f"The SumR gap {label} at {t['high']} cannot be told from the gap at {t['low']} ({t['fixed']}; "
                f"difference of differences {numbers}){more}. {describe_detectable(c)}")
    moves = "larger" if c.verdict == "better" else "smaller"
    return (f"The SumR gap {label} is {moves} at {t['high']} than at {t['low']} ({t['fixed']}; difference of "
            f"differences {numbers}).")


def _informative(values: Sequence[float]) -> tuple[list[float], bool]:
    """AUCs in their informative direction (1 - AUC when the mean is below 0.5) and whether they were flipped."""
    flip = float(np.mean(values)) < 0.5
    return ([1.0 - v for v in values] if flip else list(values)), flip


def sigma_comparisons(rows: Sequence[dict[str, Any]], level: str = "caption") -> list[dict[str, Any]]:
    """Per setting, RAL's sigma AUC against the strongest sigma-free baseline (taken in its informative
    direction; sigma is not flipped: its direction is the claim), paired by seed."""
    out = []
    table: dict[tuple[float, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r["group"] == "grid" and r["model"] == "ral" and r.get(level) and r[level].get("auc") is not None:
            table.setdefault((r["ambiguity"], r["noise"]), {})[int(r["seed"])] = r[level]
    for (amb, noise), by_seed in table.items():
        seeds = sorted(by_seed)
        names = [n for n in by_seed[seeds[0]]["baselines"]
                 if all(by_seed[s]["baselines"].get(n) is not None for s in seeds)]
        if not names:
            continue
        informative = {n: _informative([by_seed[s]["baselines"][n] for s in seeds]) for n in names}
        name = max(names, key=lambda n: float(np.mean(informative[n][0])))
        values, flipped = informative[name]
        c = compare_seeds([by_seed[s]["auc"] for s in seeds], values, paired=True, name_a="sigma",
                          name_b=f"{name}{' (read as 1 - AUC)' if flipped else ''}", metric=f"{level} AUC")
        out.append({"ambiguity": amb, "noise": noise, "baseline": name, "flipped": flipped, "seeds": seeds,
                    "comparison": c})
    return out


def sweep_comparisons(rows: Sequence[dict[str, Any]], key: str = "caption") -> list[dict[str, Any]]:
    """Each swept loss weight against the smallest scale of its term (x1 by default), paired by seed, on the
    caption sigma AUC and on SumR."""
    out = []
    runs = [r for r in rows if r["group"] == "sweep"]
    for term in dict.fromkeys(r["term"] for r in runs):
        scales = sorted({r["scale"] for r in runs if r["term"] == term})
        by = {s: {int(r["seed"]): r for r in runs if r["term"] == term and r["scale"] == s} for s in scales}
        for scale in scales[1:]:
            seeds = sorted(set(by[scale]) & set(by[scales[0]]))
            if not seeds:
                continue
            entry: dict[str, Any] = {"term": term, "scale": scale, "reference": scales[0], "seeds": seeds}
            aucs = [(by[scale][s].get(key) or {}).get("auc") for s in seeds]
            refs = [(by[scales[0]][s].get(key) or {}).get("auc") for s in seeds]
            name = f"L_{term.upper()} x{scale:g}", f"L_{term.upper()} x{scales[0]:g}"
            if None not in aucs and None not in refs:
                entry["auc"] = compare_seeds(aucs, refs, paired=True, name_a=name[0], name_b=name[1],
                                             metric=f"{key} sigma AUC")
            entry["sumr"] = compare_seeds([by[scale][s]["sumr"] for s in seeds],
                                          [by[scales[0]][s]["sumr"] for s in seeds], paired=True,
                                          name_a=name[0], name_b=name[1], metric="SumR")
            out.append(entry)
    return out


def comparison_records(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every comparison of the study as JSON-ready records (Comparison objects as dicts), for summary files."""
    def plain(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: (v.to_dict() if isinstance(v, Comparison) else v) for k, v in e.items()} for e in entries]

    pairs = pair_comparisons(rows)
    return {"pairs": plain(pairs), "trends": plain(trend_comparisons(rows)),
            "sigma": plain(sigma_comparisons(rows)), "sweep": plain(sweep_comparisons(rows))}


def findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Sentences computed from the runs: the paper's pairs per setting, how RAL's gap moves with ambiguity and
    noise, whether the study can detect the paper's headline gain, sigma against its baselines, the sweep.

    Every comparison is paired by seed (:func:`ralbook.stats.compare_seeds`) and worded by
    :func:`ralbook.stats.describe`; no model is named a winner from means or spreads alone.
    """
    rows = list(rows)
    pairs = pair_comparisons(rows)
    lines = [_describe_pair(p) for p in pairs]
    if pairs and all(p["near_chance"] for p in pairs):
        lines.append("Every model is only a few SumR points above a random ranking in every setting: the study says "
                     "nothing about which model is more robust; train longer or on more videos first.")
    lines += [_describe_trend(t) for t in trend_comparisons(rows)]
    lines += headline_reach(pairs, rows)
    summary = summarise(rows)
    lines += _chance_findings([s for s in summary if s["group"] == "grid"])
    for s in sigma_comparisons(rows):
        lines.append(f"RAL's caption sigma at {_setting(s['ambiguity'], s['noise'])} against the strongest "
                     f"sigma-free baseline ({s['baseline']}{', in its informative direction' if s['flipped'] else ''}):"
                     f" {describe(s['comparison'], what='caption AUC')}")
    for s in sweep_comparisons(rows):
        if "auc" in s:
            lines.append(f"Loss-weight sweep: {describe(s['auc'], what='caption sigma AUC')}")
        lines.append(f"Loss-weight sweep: {describe(s['sumr'], what='test SumR')}")
    if any(p["comparison"].n == 2 for p in pairs):
        lines.append("With 2 seeds the t interval has one degree of freedom (12.7 standard errors on each side): a gap "
                     "larger than the seed spread is not evidence, which is why most comparisons stay undecided.")
    return lines


# ----------------------------------------------------------------------------- findings (generated text)


def _fmt(mean: Optional[float], std: Optional[float], digits: int = 1) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _chance_findings(grid: Sequence[dict[str, Any]]) -> list[str]:
    """How far above a random ranking the models are, and whether SumR's rise with ambiguity is more than chance's."""
    cells = [s for s in grid if s.get("chance_sumr") is not None]
    if not cells:
        return []
    gains = [s["sumr_mean"] - s["chance_sumr"] for s in cells]
    low, high = min(cells, key=lambda s: s["ambiguity"]), max(cells, key=lambda s: s["ambiguity"])
    lines = [f"Every model is {min(gains):.1f} to {max(gains):.1f} SumR points above a random ranking."]
    if high["ambiguity"] > low["ambiguity"]:
        lo_chance = min(s["chance_sumr"] for s in cells if s["ambiguity"] == low["ambiguity"])
        hi_chance = max(s["chance_sumr"] for s in cells if s["ambiguity"] == high["ambiguity"])
        lines.append(f"A random ranking's SumR rises from {lo_chance:.1f} at ambiguity {low['ambiguity']:g} to "
                     f"{hi_chance:.1f} at {high['ambiguity']:g} (an ambiguous caption has many relevant videos): "
                     f"compare models within a setting, or by their gain over chance, not SumR across settings.")
    return lines


# ----------------------------------------------------------------------------- figures


def figure_sumr_vs_ambiguity(summary: Sequence[dict[str, Any]]) -> Any:
    """SumR (mean ± std over seeds) against ambiguity, one line per model, one panel per noise level."""
    import matplotlib.pyplot as plt

    grid = [s for s in summary if s["group"] == "grid"]
    noises = list(dict.fromkeys(s["noise"] for s in grid))
    fig, axes = plt.subplots(1, len(noises), figsize=(4.2 * len(noises), 3.4), sharey=True, squeeze=False)
    for ax, noise in zip(axes[0], noises):
        for model in dict.fromkeys(s["model"] for s in grid):
            pts = sorted((s for s in grid if s["noise"] == noise and s["model"] == model), key=lambda s: s["ambiguity"])
            ax.errorbar([s["ambiguity"] for s in pts], [s["sumr_mean"] for s in pts],
                        yerr=[s["sumr_std"] or 0.0 for s in pts], marker="o", capsize=3, label=MODELS[model][0])
        chance = sorted({(s["ambiguity"], s["chance_sumr"]) for s in grid
                         if s["noise"] == noise and s.get("chance_sumr") is not None})
        if chance:
            ax.plot(*zip(*chance), color="grey", linestyle="--", label="random ranking")
        ax.set_title(f"visual noise: {noise}")
        ax.set_xlabel("share of ambiguous captions")
    axes[0][0].set_ylabel("test SumR (mean ± std over seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure_sigma_auc_vs_weight(summary: Sequence[dict[str, Any]]) -> Any:
    """Caption sigma AUC and SumR against the loss-weight multiplier, one line per swept term."""
    import matplotlib.pyplot as plt

    sweep = [s for s in summary if s["group"] == "sweep"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for term in dict.fromkeys(s["term"] for s in sweep):
        pts = sorted((s for s in sweep if s["term"] == term and s.get("caption_auc_mean") is not None),
                     key=lambda s: s["scale"])
        if pts:
            left.errorbar([s["scale"] for s in pts], [s["caption_auc_mean"] for s in pts],
                          yerr=[s["caption_auc_std"] or 0.0 for s in pts], marker="o", capsize=3,
                          label=f"L_{term.upper()}")
        pts = sorted((s for s in sweep if s["term"] == term), key=lambda s: s["scale"])
        right.errorbar([s["scale"] for s in pts], [s["sumr_mean"] for s in pts],
                       yerr=[s["sumr_std"] or 0.0 for s in pts], marker="o", capsize=3, label=f"L_{term.upper()}")
    left.axhline(0.5, color="grey", linestyle=":", label="no relation")
    for ax, ylabel in ((left, "caption sigma AUC (ambiguous vs specific)"), (right, "test SumR")):
        ax.set_xscale("log")
        ax.set_xlabel("loss weight multiplier (x paper weight)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- command line
