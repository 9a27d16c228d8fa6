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
from ralbook.studies.uncertainty import labels_for_split, model_outputs, sigma_report
from ralbook.training.rundir import open_run
from ralbook.training.trainer import train


STUDY_VERSION = 1
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


def run_key(params: Any, cfg: Any, plan: StudyPlan) -> str:
    """Cache key of a run: generator version and parameters, the configuration without paths or device,
    and the evaluation settings."""

    config = cfg.to_dict()
    config["data"] = {k: v for k, v in config["data"].items() if k != "data_root"}
    config["train"] = {k: v for k, v in config["train"].items() if k != "device"}
    return digest({"study": STUDY_VERSION, "generator": GENERATOR_VERSION, "params": dataclasses.asdict(params),
                   "config": config, "n_boot": plan.n_boot})


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


def run_one(spec: RunSpec, plan: StudyPlan, cache: Path, device: str = "cpu") -> tuple[dict[str, Any], bool]:
    """(result row, trained?) of one run; a cached result is read back without training."""

    params = demo_params(plan, spec.ambiguity, spec.noise)
    data_root = ensure_collection(params, cache)
    cfg = run_config(plan, spec, data_root, device)
    key = run_key(params, cfg, plan)
    folder = cache / "runs" / key
    result_file = folder / "result.json"
    row = {**dataclasses.asdict(spec), "key": key, "chance_sumr": chance_sumr(data_root, params.n_test)}
    if result_file.is_file():
        return {**row, **json.loads(result_file.read_text())}, False
    if folder.exists():
        shutil.rmtree(folder)   # an interrupted run: start it again
    started = time.perf_counter()
    train(cfg, folder / "run", progress=False)
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
    specs = plan.runs()
    bar = tqdm(specs, desc="robustness runs", disable=not progress)
    for spec in bar:
        row, new = run_one(spec, plan, cache, device)
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
        entry["sumr_mean"], entry["sumr_std"], _ = _stats([m["sumr"] for m in members])
        entry["chance_sumr"], _, _ = _stats([m.get("chance_sumr") for m in members])
        for level in ("caption", "support_set"):
            entry[f"{level}_auc_mean"], entry[f"{level}_auc_std"], _ = _stats([_auc_of(m, level) for m in members])
            names = next((list(m[level]["baselines"]) for m in members if m.get(level)), [])
            for name in names:
                entry[f"{level}_{name}_auc_mean"], _, _ = _stats([_auc_of(m, level, name) for m in members])
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- findings (generated text)


def _fmt(mean: Optional[float], std: Optional[float], digits: int = 1) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def findings(summary: Sequence[dict[str, Any]]) -> list[str]:
    """Sentences computed from the summary: who wins where (with spreads), and whether sigma beats the baselines."""
    grid = [s for s in summary if s["group"] == "grid"]
    lines: list[str] = []
    separated = []  # per compared setting: does the leader's gap exceed the seed spread?
    for noise in dict.fromkeys(s["noise"] for s in grid):
        for amb in sorted({s["ambiguity"] for s in grid if s["noise"] == noise}):
            cell = sorted((s for s in grid if s["noise"] == noise and s["ambiguity"] == amb),
                          key=lambda s: -s["sumr_mean"])
            if len(cell) < 2:
                continue
            best, second = cell[0], cell[1]
            gap = best["sumr_mean"] - second["sumr_mean"]
            spread = max(best["sumr_std"] or 0.0, second["sumr_std"] or 0.0)
            separated.append(gap > spread)
            verdict = "larger than" if separated[-1] else "within"
            chance = f" (a random ranking: {best['chance_sumr']:.1f})" if best.get("chance_sumr") is not None else ""
            lines.append(f"Noise {noise}, ambiguity {amb:g}{chance}: {best['label']} leads with SumR "
                         f"{_fmt(best['sumr_mean'], best['sumr_std'])} (n={len(best['seeds'])}) over "
                         f"{second['label']} {_fmt(second['sumr_mean'], second['sumr_std'])}; the gap of "
                         f"{gap:.1f} is {verdict} the larger seed spread ({spread:.1f}).")
    if separated:
        lines.append(f"In {sum(separated)} of {len(separated)} settings the leading model's gap exceeds the seed "
                     f"spread{': no model is shown to be more robust here' if not any(separated) else ''}.")
    lines += _chance_findings(grid)
    ral = [s for s in grid if s["model"] == "ral" and s.get("caption_auc_mean") is not None]
    for s in ral:
        baselines = {k[len("caption_"):-len("_auc_mean")]: v for k, v in s.items()
                     if k.startswith("caption_") and k.endswith("_auc_mean") and k != "caption_auc_mean"
                     and v is not None}
        if not baselines:
            continue
        name, value = max(baselines.items(), key=lambda kv: abs(kv[1] - 0.5))
        sigma = s["caption_auc_mean"]
        margin = abs(sigma - 0.5) - abs(value - 0.5)
        spread = s["caption_auc_std"] or 0.0
        flipped = f" (read the other way round: {1 - value:.3f})" if value < 0.5 else ""
        verdict = (f"sigma separates ambiguous captions better by {margin:.3f}" if margin > 0
                   else f"sigma does not beat that baseline (short by {-margin:.3f})")
        lines.append(f"RAL sigma at noise {s['noise']}, ambiguity {s['ambiguity']:g}: caption AUC "
                     f"{_fmt(sigma, spread, 3)} vs the strongest baseline ({name}) {value:.3f}{flipped}: {verdict}, "
                     f"{'more' if abs(margin) > spread else 'less'} than the seed spread of sigma's AUC ({spread:.3f}).")
    sweep = sorted((s for s in summary if s["group"] == "sweep" and s.get("caption_auc_mean") is not None),
                   key=lambda s: (s["term"], s["scale"]))
    if sweep:
        best = max(sweep, key=lambda s: abs(s["caption_auc_mean"] - 0.5))
        parts = ", ".join(f"L_{s['term'].upper()} x{s['scale']:g}: {_fmt(s['caption_auc_mean'], s['caption_auc_std'], 3)}"
                          f" (SumR {s['sumr_mean']:.1f})" for s in sweep)
        lines.append(f"Loss-weight sweep (RAL, ambiguity {sweep[0]['ambiguity']:g}, noise {sweep[0]['noise']}): "
                     f"caption sigma AUC {parts}. Furthest from 0.5: L_{best['term'].upper()} x{best['scale']:g}.")
    return lines


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
