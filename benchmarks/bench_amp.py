"""bf16 autocast against fp32: test metrics and time of the same runs, several seeds, side by side.

    python benchmarks/bench_amp.py --scratch outputs/amp                       # demo preset, seeds 1 2 3, 4 epochs
    python benchmarks/bench_amp.py --scratch outputs/amp --seeds 1 2 --epochs 2 --json amp.json
    # the collection of bench_index.py --generate-tvr-size (TVR's test size and feature widths, 256
    # training videos), a hidden-384 model:
    python benchmarks/bench_amp.py --scratch outputs/amp-tvr --tvr-size outputs/tvrsize --epochs 6

For every seed it trains the demo preset on the bundled data twice (``train.amp=none`` and ``bf16``),
each evaluated on the test split with the precision it was trained in, and also evaluates the fp32
model with bf16 autocast (the evaluation's own share of the difference). It prints the fused SumR of
each run, the bf16 - fp32 difference per seed, and the spread of fp32 SumR over the seeds: a
difference inside that spread is within seed noise. The CPU's bf16 instructions are named on the first
line (on CPUs without AMX, bf16 is slow; the metric differences are what this script is for).
This is a measurement script, not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


# the model of bench_index.py's TVR-size collection: TVR's widths, hidden 384
TVR_SIZE = {"data.visual_dim": 1024, "data.text_dim": 768, "model.hidden_size": 384, "model.n_heads": 4,
            "train.batch_size": 64}


def one_run(scratch: Path, seed: int, amp: str, epochs: int, data_root: str, tvr_size: bool) -> dict[str, Any]:
    from ralbook.config import build_config
    from ralbook.training.trainer import train

    sizes = dict(TVR_SIZE, **{"train.hard_negative_start_epoch": epochs}) if tvr_size else {}
    cfg = build_config("demo", data_root=data_root, epochs=epochs, seed=seed, device="cpu",
                       overrides={"train.amp": amp, **sizes})
    run_dir = scratch / f"seed{seed}_{amp}"
    start = time.perf_counter()
    result = train(cfg, run_dir, resume=(run_dir / "config.json").is_file(), progress=False)
    return {"seed": seed, "amp": amp, "sumr": result.test["fused"]["SumR"], "seconds": time.perf_counter() - start,
            "run_dir": str(run_dir)}


def eval_with(run_dir: str, amp: str) -> float:
    from ralbook.retrieval.evaluate import evaluate
    from ralbook.training.rundir import open_run

    cfg, model, collection = open_run(run_dir, "cpu")
    return evaluate(model, collection, "test", cfg, "cpu", amp=amp, progress=False).metrics["fused"]["SumR"]


def main() -> None:
    from bench_engine import bf16_instructions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scratch", required=True, help="run folders are written here (reused when complete)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--data-root", default="data")
    p.add_argument("--tvr-size", metavar="SCRATCH",
                   help="use (or generate) bench_index.py's TVR-size collection under SCRATCH instead of --data-root")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    data_root, what = args.data_root, "demo preset"
    if args.tvr_size:
        from bench_index import generate_tvr_size

        data_root, what = str(generate_tvr_size(Path(args.tvr_size), 2)[0]), "TVR-size collection, hidden 384"
    print(f"{cpu}; bf16 instructions: {bf16_instructions()}; {what}, {args.epochs} epochs, seeds {args.seeds}",
          flush=True)
    rows = []
    for seed in args.seeds:
        pair = {amp: one_run(Path(args.scratch), seed, amp, args.epochs, data_root, bool(args.tvr_size))
                for amp in ("none", "bf16")}
        eval_bf16 = eval_with(pair["none"]["run_dir"], "bf16")
        row = {"seed": seed, "fp32": pair["none"]["sumr"], "bf16": pair["bf16"]["sumr"], "fp32_model_bf16_eval": eval_bf16,
               "fp32_s": pair["none"]["seconds"], "bf16_s": pair["bf16"]["seconds"]}
        rows.append(row)
        print(f"seed {seed}: fused SumR fp32 {row['fp32']:.1f} ({row['fp32_s']:.0f} s), bf16 {row['bf16']:.1f} "
              f"({row['bf16_s']:.0f} s): {row['bf16'] - row['fp32']:+.1f}; fp32 model, bf16 evaluation "
              f"{eval_bf16:.1f}: {eval_bf16 - row['fp32']:+.1f}", flush=True)
    diffs = [r["bf16"] - r["fp32"] for r in rows]
    eval_diffs = [r["fp32_model_bf16_eval"] - r["fp32"] for r in rows]
    spread = statistics.stdev(r["fp32"] for r in rows) if len(rows) > 1 else float("nan")
    mean = statistics.mean(diffs)
    print(f"\nbf16 - fp32, training + evaluation: mean {mean:+.2f} SumR (per seed {', '.join(f'{d:+.1f}' for d in diffs)});"
          f" evaluation alone: mean {statistics.mean(eval_diffs):+.2f}; fp32 SumR over seeds: standard deviation "
          f"{spread:.2f}: the mean difference is {'within' if abs(mean) <= spread else 'outside'} the seed spread",
          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "bf16_instructions": bf16_instructions(),
                                               "collection": what,
                                               "epochs": args.epochs,
                                               "rows": rows, "mean_diff": mean, "seed_std": spread}, indent=1))


if __name__ == "__main__":
    main()
