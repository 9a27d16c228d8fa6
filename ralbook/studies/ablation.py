"""The ablation sweep of notebook 06: RAL's switches and the backbone dimension, each compared with its
reference paired by seed, beside the difference that seeds alone make.

Why paired seeds: a variant and its reference trained with the same seed share the data order and the
initialisation, so the per-seed difference removes part of the seed noise; the interval is a Student-t
interval over seeds (:func:`ralbook.stats.compare_seeds`). With two seeds it has one degree of freedom
(12.7 standard errors each side), so a gap "larger than the seed spread" is not yet evidence; the text says
what size the design could have detected and how many seeds a difference of the observed size needs.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Optional, Sequence

from ralbook.stats import Comparison, compare_seeds, describe, describe_detectable


RAL_SWITCHES = ("model.csa", "model.word_confidence", "model.msra")
# The paper's headline: GMMFormer v2 + RAL (SumR 198.8) over GMMFormer v2 alone (189.1) on TVR's test split.
PAPER_GAIN = 9.7
PAPER_GAIN_LABEL = "the paper's headline gain of RAL over GMMFormer v2 on TVR, in SumR"
SEED_SEP = "@"


def seed_variants(variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """``name@seed`` -> the variant's settings with ``train.seed``: every variant once per seed (paired seeds)."""
    if not seeds:
        raise ValueError("seed_variants: need at least one seed")
    return {f"{name}{SEED_SEP}{seed}": {**settings, "train.seed": int(seed)}
            for name, settings in variants.items() for seed in seeds}


def backbone_variants(backbones: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Variant name -> settings: each backbone alone (RAL's three switches off) and with RAL (all on), per seed."""
    out: dict[str, dict[str, Any]] = {}
    for backbone in backbones:
        for ral in (False, True):
            for seed in seeds:
                name = f"{backbone}{'+RAL' if ral else ''}{SEED_SEP}{seed}"
                out[name] = {"model.backbone": backbone, **{k: ral for k in RAL_SWITCHES}, "train.seed": seed}
    return out


def _by_seed(metrics: Mapping[str, Mapping[str, float]], name: str, seeds: Sequence[int],
             metric: str) -> dict[int, float]:
    return {int(s): float(metrics[f"{name}{SEED_SEP}{s}"][metric]) for s in seeds
            if f"{name}{SEED_SEP}{s}" in metrics}


def _paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[float], list[float], list[int]]:
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds], seeds


def switch_comparisons(metrics: Mapping[str, Mapping[str, float]], variants: Sequence[str], seeds: Sequence[int],
                       reference: str = "full", metric: str = "SumR") -> list[dict[str, Any]]:
    """Each variant minus ``reference`` on ``metric``, paired by seed; ``metrics`` is keyed ``name@seed``."""
    ref = _by_seed(metrics, reference, seeds, metric)
    out = []
    for name in variants:
        if name == reference:
            continue
        a, b, common = _paired(_by_seed(metrics, name, seeds, metric), ref)
        if common:
            out.append({"variant": name, "seeds": common,
                        "comparison": compare_seeds(a, b, paired=True, name_a=f"`{name}`", name_b=f"`{reference}`",
                                                    metric=f"fused {metric}")})
    return out


def seed_only(metrics: Mapping[str, Mapping[str, float]], seeds: Sequence[int], reference: str = "full",
              metric: str = "SumR") -> Optional[dict[str, Any]]:
    """The seed-only variant: ``reference`` at each later seed minus at the first seed, and the SD over seeds.

    Why: the same model with another seed is the difference no switch caused; every delta stands beside it.
    """
    values = _by_seed(metrics, reference, seeds, metric)
    if len(values) < 2:
        return None
    first, *rest = sorted(values, key=list(seeds).index)
    return {"reference": reference, "first_seed": first, "values": values,
            "differences": {s: values[s] - values[first] for s in rest},
            "sd": statistics.stdev(values.values())}


def switch_findings(comparisons: Sequence[Mapping[str, Any]], noise: Optional[Mapping[str, Any]],
                    reference: str = "full") -> str:
    """Plain sentences: each switch against the reference (paired by seed, with its interval and the size the
    design detects), beside the seed-only difference."""
    if not comparisons:
        return f"No variant to compare with `{reference}` (a variant needs a run at a seed `{reference}` has)."
    lines = []
    if noise is None:
        lines.append(f"- Seed only: `{reference}` was trained with one seed, so there is no measure of what seeds "
                     "alone do: no difference below is evidence.")
    else:
        diffs = ", ".join(f"{d:+.1f} (seed {s})" for s, d in noise["differences"].items())
        lines.append(f"- Seed only (the same model, another seed): `{reference}` moves by {diffs} against seed "
                     f"{noise['first_seed']}; SD over its {len(noise['values'])} seeds {noise['sd']:.1f}. A switch's "
                     "difference of this size is what seeds alone produce.")
    for entry in comparisons:
        c: Comparison = entry["comparison"]
        lines.append(f"- {describe(c)} {describe_detectable(c)}")
    if any(e["comparison"].n == 2 for e in comparisons):
        lines.append("- With 2 seeds the t interval has one degree of freedom (12.7 standard errors each side): a gap "
                     "larger than the seed spread is not evidence; add seeds to decide.")
    return "\n".join(lines)


def backbone_table(metrics: Mapping[str, Mapping[str, float]],
                   variants: Mapping[str, Mapping[str, Any]], metric: str = "SumR") -> list[dict[str, Any]]:
    """One row per backbone: mean ``metric`` alone and with RAL over the seeds, and the difference with RAL,
    paired by seed: its interval, the smallest difference the design detects and the verdict."""
    values: dict[str, dict[bool, dict[int, float]]] = {}
    for name, settings in variants.items():
        if name not in metrics:
            continue
        ral = all(settings.get(k, True) for k in RAL_SWITCHES)
        values.setdefault(settings["model.backbone"], {False: {}, True: {}})[ral][int(settings["train.seed"])] = \
            float(metrics[name][metric])
    rows = []
    for backbone, by in values.items():
        with_ral, alone, seeds = _paired(by[True], by[False])
        if not seeds:
            continue
        c = compare_seeds(with_ral, alone, paired=True, name_a=f"{backbone} + RAL", name_b=f"{backbone} alone",
                          metric=f"fused {metric}")
        finite = math.isfinite(c.detectable)
        rows.append({"backbone": backbone, "seeds": len(seeds), f"{metric} alone": round(statistics.mean(alone), 1),
                     f"{metric} +RAL": round(statistics.mean(with_ral), 1), "difference": round(c.estimate, 1),
                     "95% CI": [round(c.low, 1), round(c.high, 1)] if finite else None,
                     "detectable": round(c.detectable, 1) if finite else None, "verdict": c.verdict,
                     "comparison": c.to_dict()})
    return rows


def backbone_findings(rows: Sequence[Mapping[str, Any]], metric: str = "SumR") -> str:
    """Plain sentences from ``rows``: per backbone, RAL's difference with its interval; for GMMFormer v2 also
    whether the design detects the paper's headline gain, and how many seeds would."""
    if not rows:
        return "No backbone comparison was run (`backbones` is empty)."
    lines = []
    for r in rows:
        c = Comparison.from_dict(r["comparison"])
        size = PAPER_GAIN if r["backbone"] == "gmmformer_v2" else None
        reach = describe_detectable(c, size=size, label=PAPER_GAIN_LABEL) if size else describe_detectable(c)
        lines.append(f"- **{r['backbone']}**: {describe(c, what=f'test {metric}')} {reach}")
    if any(r["seeds"] == 2 for r in rows):
        lines.append("- With 2 seeds a gap larger than the seed spread is not evidence (the t interval has one degree "
                     "of freedom); `backbone_seeds` with more seeds narrows it.")
    return "\n".join(lines)
