"""The ablation sweep of notebook 06: train variants, and the backbone dimension (each backbone with and
without RAL over a few seeds), summarised as a table and a generated statement of what it shows."""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence


RAL_SWITCHES = ("model.csa", "model.word_confidence", "model.msra")


def backbone_variants(backbones: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Variant name -> settings: each backbone alone (RAL's three switches off) and with RAL (all on), per seed."""
    out: dict[str, dict[str, Any]] = {}
    for backbone in backbones:
        for ral in (False, True):
            for seed in seeds:
                name = f"{backbone}{'+RAL' if ral else ''}@{seed}"
                out[name] = {"model.backbone": backbone, **{k: ral for k in RAL_SWITCHES}, "train.seed": seed}
    return out


def backbone_table(metrics: Mapping[str, Mapping[str, float]],
                   variants: Mapping[str, Mapping[str, Any]], metric: str = "SumR") -> list[dict[str, Any]]:
    """One row per backbone: mean ``metric`` alone and with RAL over the seeds, their difference, and the
    seed range (largest max - min over seeds of the two settings; None with a single seed)."""
    values: dict[str, dict[bool, list[float]]] = {}
    for name, settings in variants.items():
        if name not in metrics:
            continue
        ral = all(settings.get(k, True) for k in RAL_SWITCHES)
        values.setdefault(settings["model.backbone"], {False: [], True: []})[ral].append(float(metrics[name][metric]))
    rows = []
    for backbone, by in values.items():
        if not by[False] or not by[True]:
            continue
        ranges = [max(v) - min(v) for v in by.values() if len(v) > 1]
        alone, with_ral = statistics.mean(by[False]), statistics.mean(by[True])
        rows.append({"backbone": backbone, "seeds": len(by[False]), f"{metric} alone": round(alone, 1),
                     f"{metric} +RAL": round(with_ral, 1), "difference": round(with_ral - alone, 1),
                     "seed range": round(max(ranges), 1) if ranges else None})
    return rows


def backbone_findings(rows: Sequence[Mapping[str, Any]], metric: str = "SumR") -> str:
    """Plain sentences, computed from ``rows``: per backbone, does RAL change the metric beyond seed noise?"""
    if not rows:
        return "No backbone comparison was run (`backbones` is empty)."
    lines = []
    for r in rows:
        diff, noise = r["difference"], r["seed range"]
        said = (f"**{r['backbone']}**: {metric} {r[f'{metric} alone']} alone, {r[f'{metric} +RAL']} with RAL "
                f"({diff:+.1f}, mean of {r['seeds']} seed{'s' if r['seeds'] != 1 else ''})")
        if noise is None:
            verdict = "one seed only, so there is no estimate of the noise: do not read the difference as an effect."
        elif abs(diff) <= noise:
            verdict = (f"the difference is within seed noise (seeds alone move {metric} by up to {noise:.1f}), "
                       "so this run does not show an effect of RAL on this backbone.")
        else:
            verdict = (f"the difference is larger than the seed range ({noise:.1f}): a hint that RAL "
                       f"{'helps' if diff > 0 else 'hurts'} this backbone on this data; with "
                       f"{r['seeds']} seeds the range is a rough noise estimate, so more seeds would make it firm.")
        lines.append(f"- {said}: {verdict}")
    return "\n".join(lines)


def switch_findings(metrics: Mapping[str, Mapping[str, float]], reference: str = "full",
                    metric: str = "SumR") -> str:
    """Plain sentences: each switch variant's ``metric`` against the ``reference`` variant."""
    if reference not in metrics:
        return f"No `{reference}` variant to compare the switches against."
    base = float(metrics[reference][metric])
    lines = [f"- `{name}`: {metric} {float(m[metric]):.1f} ({float(m[metric]) - base:+.1f} against `{reference}`)"
             for name, m in metrics.items() if name != reference]
    return "\n".join(lines) or "Only the reference variant was run."
