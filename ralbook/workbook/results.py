"""The results file of a demo run (results.json, RESULTS.md) and the curated figures."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from scipy.stats import t as _t

from ralbook.files import json_ready, repo_root
from ralbook.runtime.environment import ENVIRONMENT_KEY, environment_lines
from ralbook.studies.report import SUMMARY_NOTEBOOKS, _SCALAR_ROWS, chance_sumr


RESULTS_FILE = "results.json"


RESULTS_MD = "RESULTS.md"


FIGURES_DIR = "figures"


# Summary keys left out of the results file (file lists and per-item arrays).
_DROPPED_KEYS = {"figures", "run_files", "run_dir", "cache_dir", "epochs", "val_sumr", "shown"}


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
        out[ENVIRONMENT_KEY] = dict(config[ENVIRONMENT_KEY])  # the machine that trained the run (runtime.environment)
    return out


def without_machine_paths(obj: Any, root: Path) -> Any:
    """``obj`` with paths inside ``root`` (the repository) written relative to it: a results file is shared and
    committed (figures/results.json), and the folder a user cloned into is not a result."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, str):
        return obj.replace(prefix, "")
    if isinstance(obj, Mapping):
        return {k: without_machine_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [without_machine_paths(v, root) for v in obj]
    return obj


def write_results(path: str | Path, results: Mapping[str, Any]) -> Path:
    """The results file, as JSON with paths inside the repository relative to it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ready = without_machine_paths(json_ready(results), repo_root())
    out.write_text(json.dumps(ready, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _get(d: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return d


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


# The spread over seeds a fresh run of the demo preset is expected to show (measured, not assumed):
# `ralbook train --preset demo --seeds 1 2 3 4 5` at the preset's own length, quoted in docs/performance.md
# ("Seed spread of the demo preset"; test fused SumR 214.2, 221.8, 211.4, 221.9, 206.3).
SEED_SPREAD: Mapping[str, Any] = {
    "metric": "test fused SumR", "sd": 6.77, "seeds": 5, "preset": "demo", "epochs": 10,
    "machine": "a 2-core AMD EPYC with AVX-512 and avx512_bf16 (no AMX), fp32", "source": "docs/performance.md",
}


def _study_spreads(results: Mapping[str, Any]) -> list[str]:
    """What the opt-in studies in ``results`` measured of seed noise (07: SD per setting; 06: the seed-only run)."""
    lines = []
    study = _get(results, "notebooks", "07_robustness", "summary") or []
    sds = [s["sumr_std"] for s in study if isinstance(s, Mapping) and s.get("group") == "grid"
           and s.get("sumr_std") is not None and len(s.get("seeds") or ()) > 1]
    if sds:
        n = max(len(s.get("seeds") or ()) for s in study if isinstance(s, Mapping))
        lines.append(f"The robustness study (07) measured SDs over its {n} seeds from {min(sds):.1f} to {max(sds):.1f} "
                     f"SumR across its settings and models (smaller models on generated collections).")
    noise = _get(results, "notebooks", "06_ablation_sweep", "seed_only")
    if isinstance(noise, Mapping) and noise.get("differences"):
        moves = ", ".join(f"{float(d):+.1f}" for d in noise["differences"].values())
        lines.append(f"The ablation sweep's seed-only run (06) moved the full model's SumR by {moves} "
                     f"(SD over its {len(noise.get('values') or {})} seeds {float(noise['sd']):.1f}).")
    return lines


def _length_note(results: Mapping[str, Any], spread: Mapping[str, Any]) -> str:
    """Whether the spread was measured at this run's own training length (a longer run may spread less)."""
    epochs = _get(results, "settings", "epochs")
    if epochs is not None and int(epochs) == int(spread["epochs"]):
        return f"the spread was measured at this run's own training length ({epochs} epochs)."
    return (f"this run's own training length ({epochs or 'see above'} epochs) has not been measured over seeds, "
            f"and a run of another length may spread differently.")


def travel_lines(results: Mapping[str, Any], spread: Mapping[str, Any] = SEED_SPREAD) -> list[str]:
    """The section "How far these numbers travel": the spread a fresh run is expected to show, measured over
    seeds, and which kinds of sentence it may change."""
    sd, n = float(spread["sd"]), int(spread["seeds"])
    # a fresh run minus this run: SD sqrt(2) x sd; 95% of such differences within t(n - 1) x that (sd from n seeds)
    reach = float(_t.ppf(0.975, n - 1)) * math.sqrt(2.0) * sd
    lines = [
        f"A fresh run trains a different model when the seed, the CPU (model and flags), the thread count, torch or "
        f"the precision differ (Machine, below). Measured over seeds, {spread['metric']} of the {spread['preset']} "
        f"preset has a standard deviation of {sd:.1f} ({n} seeds, {spread['epochs']} epochs, on "
        f"{spread['machine']}; {spread['source']}). The difference between a fresh run and this one then has an SD "
        f"of about {math.sqrt(2.0) * sd:.1f}, and 95% of fresh runs are expected within ±{reach:.1f} SumR of the "
        f"values above (t with {n - 1} degrees of freedom, roughly normal seed noise); {_length_note(results, spread)}",
        "Which sentences may change: any single number above (the headline table, 00-05) may move by that much. "
        "Comparisons inside one run (03's scores, 04's sigma against its baselines, 05's word weights) carry "
        "intervals over the queries or items of this one model: they describe this model, and a verdict on a "
        "difference that is small against the seed spread may flip on a fresh run. Comparisons paired over seeds "
        "(06, 07) include seed noise in their intervals, so their verdicts are the ones expected to hold.",
    ]
    return lines + _study_spreads(results)


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
    lines += ["", "## How far these numbers travel", ""] + [f"* {line}" for line in travel_lines(results)]
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
