"""The spread over seeds of every learned-quality number the tests assert, with the tests' own settings.

    python benchmarks/seed_spread.py --seeds 9527 1 2 3 4 --only train backbones notebooks --out spread.json

Why: a threshold on learned quality set from one machine's run of one seed is a coin toss on another
CPU (another CPU trains a slightly different model from the same seed). The tests' thresholds are set
from the spread this script prints (minimum over seeds minus a margin, or an invariant such as "trained
beats the same model untrained"); their docstrings quote the values, the seeds and the CPU.

Groups (each trains what the tests train, with the seed changed through ``train.seed``):

* ``train``      tests/test_train.py's learning run: test fused SumR minus chance;
* ``backbones``  tests/test_backbones.py's short runs of the bare backbones: SumR minus chance;
* ``notebooks``  tests/test_notebooks.py's notebook 02 run, then notebooks 04 and 05 on it: test SumR minus
  chance, mean caption sigma, filler AUC, per-caption AUC, the localisation hit rates, and the same hit rates
  of the model before training (same seed, same collection).

This is a measurement script, not a test. It takes several minutes per seed on two CPU cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def chance_sumr(n_videos: int) -> float:
    return sum(100.0 * min(k, n_videos) / n_videos for k in (1, 5, 10, 100))


def train_group(seed: int, scratch: Path) -> dict[str, float]:
    from test_train import LEARN_TEST, LEARN_TRAIN, LEARN_VAL, easy_demo, tiny_cfg

    from ralbook.training.trainer import train

    root = easy_demo(scratch / "learn", LEARN_TRAIN, LEARN_VAL, LEARN_TEST)
    cfg = tiny_cfg(root, hidden=32, n_epoch=3, batch_size=24, hard_negative_start_epoch=2)
    result = train(cfg.override(f"train.seed={seed}"), scratch / "run_learning", progress=False)
    return {"learning_run SumR - chance": result.test["fused"]["SumR"] - chance_sumr(LEARN_TEST)}


def backbones_group(seed: int, scratch: Path) -> dict[str, float]:
    from test_train import LEARN_TEST, LEARN_TRAIN, LEARN_VAL, easy_demo, tiny_cfg

    from ralbook.training.trainer import train

    root = easy_demo(scratch / "learn_bb", LEARN_TRAIN, LEARN_VAL, LEARN_TEST)
    out = {}
    for backbone, epochs in (("gmmformer", 1), ("ms_sl", 3)):
        cfg = tiny_cfg(root, hidden=32, n_epoch=epochs, batch_size=24, hard_negative_start_epoch=5)
        for assignment in (f"model.backbone={backbone}", "model.csa=false", "model.word_confidence=false",
                           "model.msra=false", f"train.seed={seed}"):
            cfg = cfg.override(assignment)
        result = train(cfg, scratch / f"run_{backbone}", progress=False)
        out[f"{backbone} {epochs} epochs SumR - chance"] = result.test["fused"]["SumR"] - chance_sumr(LEARN_TEST)
    return out


def hit_rates_before_and_after(run: Path, seed: int, n: int = 40) -> dict[str, float]:
    """moment_hit_rates of the trained model and of the same model at initialisation (the run's config
    and seed, no step taken), on the first ``n`` test captions."""
    import torch

    from ralbook.model import build_model
    from ralbook.studies import analysis
    from ralbook.training.rundir import open_run
    from ralbook.workbook import pipeline

    cfg, trained, coll = open_run(run, "cpu")
    truth = pipeline.ground_truth(cfg.data.data_root, cfg.data.collection)
    fillers = {w for w, t in dict(truth.word_types).items() if t == "filler"}
    caps = [c for c, _ in coll.captions("test")][:n]
    torch.manual_seed(seed)
    untrained = build_model(cfg.model).eval()
    after = analysis.moment_hit_rates(trained, coll, caps, truth, fillers, cfg.data.max_frames)
    before = analysis.moment_hit_rates(untrained, coll, caps, truth, fillers, cfg.data.max_frames)
    return {"trained content_hit_rate (first 40)": after["content_hit_rate"],
            "untrained content_hit_rate (first 40)": before["content_hit_rate"],
            "untrained filler_hit_rate (first 40)": before["filler_hit_rate"],
            "trained - untrained content (first 40)": after["content_hit_rate"] - before["content_hit_rate"]}


def notebooks_group(seed: int, scratch: Path, demo_root: Path) -> dict[str, float]:
    from test_notebooks import TINY, TINY_OVERRIDES, TRAIN_EPOCHS

    from ralbook.workbook import pipeline

    nb = ROOT / "notebooks"
    run = scratch / "run"

    def execute(name: str, **params: Any) -> dict:
        summary = scratch / f"{name}.json"
        pipeline.run_notebook(nb / f"{name}.ipynb", scratch / f"{name}.ipynb",
                              {"figures_dir": str(scratch / "figures"), "summary_path": str(summary), **params})
        return json.loads(summary.read_text())

    s02 = execute("02_train", data_root=str(demo_root), run_dir=str(run), epochs=TRAIN_EPOCHS,
                  overrides=TINY_OVERRIDES, progress=False, seed=seed, **TINY)
    s04 = execute("04_uncertainty", run_dir=str(run), n_projection_videos=3, n_samples=10)
    s05 = execute("05_word_confidence", run_dir=str(run), n_queries=4, n_frame_maps=2, n_localisation=40)
    loc = s05["localisation"]
    out = {"02 test SumR - chance": s02["test"]["fused"]["SumR"] - chance_sumr(s04["n_videos"]),
           "04 mean caption sigma": s04["sigma"]["single captions"]["mean"],
           "05 filler_auc": s05["filler_auc"], "05 per_caption_auc": s05["per_caption_auc"],
           "05 content_hit_rate": loc["content_hit_rate"], "05 filler_hit_rate": loc["filler_hit_rate"],
           "05 chance": loc["chance"], "05 content / chance": loc["content_hit_rate"] / loc["chance"],
           "05 content - filler": loc["content_hit_rate"] - loc["filler_hit_rate"]}
    out.update({f"05 {k}": v for k, v in hit_rates_before_and_after(run, seed).items()})
    return out


def cpu_line() -> str:
    import torch

    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[9527, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="+", default=["train", "backbones", "notebooks"],
                        choices=["train", "backbones", "notebooks"])
    parser.add_argument("--out", type=Path, default=None, help="also write the values as JSON here")
    args = parser.parse_args()
    from test_notebooks import DEMO_SIZES

    from ralbook.data.demo import generate_demo
    from ralbook.runtime import configure_threads

    configure_threads(announce=lambda line: None)
    values: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        demo_root = Path(tmp) / "demo_data"
        if "notebooks" in args.only:
            generate_demo(demo_root, **DEMO_SIZES)
        for seed in args.seeds:
            for group in args.only:
                scratch = Path(tmp) / f"{group}_{seed}"
                scratch.mkdir()
                start = time.perf_counter()
                got = (train_group(seed, scratch) if group == "train" else backbones_group(seed, scratch)
                       if group == "backbones" else notebooks_group(seed, scratch, demo_root))
                print(f"seed {seed} {group} ({time.perf_counter() - start:.0f} s): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in got.items()), flush=True)
                for k, v in got.items():
                    values.setdefault(k, {})[seed] = v
    print(cpu_line())
    for k, per_seed in values.items():
        xs = list(per_seed.values())
        print(f"  {k:34s} min {min(xs):8.3f}  mean {mean(xs):8.3f}  max {max(xs):8.3f}  "
              f"({', '.join(f'{s}: {v:.3f}' for s, v in per_seed.items())})")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_line(), "values": values}, indent=1))


if __name__ == "__main__":
    main()
