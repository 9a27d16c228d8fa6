"""Exhaustive vs two-stage retrieval: time, peak memory and recall, side by side in one run.

    # a collection of the TVR test split's size (2,200 test videos, 10,953 queries; Dv 1024, Dt 768),
    # generated under SCRATCH with a hidden-384 model trained on its 2,000 training videos, then measured:
    python benchmarks/bench_index.py --generate-tvr-size SCRATCH
    # any checkpoint and collection:
    python benchmarks/bench_index.py --checkpoint runs/demo/best.pt --data-root data --collection demo

Each measurement runs in its own process, so that its peak resident memory is its own: index
building (float32, and float16 unless --float16-k 0), exhaustive ranking of every query against
every stored video encoding (what ``evaluate`` does after encoding the videos), and two-stage
ranking for each K. Both rankings include encoding the queries. This is a measurement script, not a test.

Recall preservation is reported as the paired difference two-stage - exhaustive per query
(``ralbook.stats.compare_rankings``: bootstrap over queries, 95% interval), on standard recall (the annotated
video) and, with ``--truthful`` where the collection ships ``GroundTruth/relevant_test.json``, on recall
against every truthful video (slow: ranking against every truthful video costs one pass over the score matrix
per listed video, about 9 minutes per measurement at TVR size, where ambiguous captions list up to all 2,200
videos; it runs after the timed part). It only means something for a model that has learned: a model near chance has most relevant videos
outside any K, where both rankings are equally bad.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ralbook.config import preset
from ralbook.stats import compare_rankings, describe, ranking_values

METRICS = ("R@1", "R@5", "R@10", "R@100", "SumR")


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB.

    On Linux from VmHWM: ru_maxrss survives fork + exec, so a child started by a parent that had
    generated the collection in-process reported the parent's peak instead of its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def generate_tvr_size(scratch: Path, epochs: int) -> tuple[Path, Path]:
    """A demo-generator collection with the TVR test split's size and feature widths, and a model trained on it.

    The recipe is the demo preset's with hidden 384 and lr 1e-4: with the preset's lr 3e-4 a hidden-384 model
    stayed at chance on this generator (measured 2026-12-05, demo-sized collection at Dv 1024: test SumR 58.4
    vs chance 58; with lr 1e-4: 295.5). fp32, so that the measurement does not depend on the CPU's bf16.
    """
    from ralbook.data.demo import generate_demo
    from ralbook.training.trainer import train

    root = scratch / "data"
    if not (root / "demo").is_dir():
        generate_demo(root, n_train=2000, n_val=100, n_test=2200, visual_dim=1024, text_dim=768,
                      captions_mean=5.0, captions_max=9)
    run_dir = scratch / "run"
    if not (run_dir / "best.pt").is_file():
        cfg = preset("demo", data={"data_root": str(root), "visual_dim": 1024, "text_dim": 768},
                     model={"hidden_size": 384, "n_heads": 4},
                     train={"n_epoch": epochs, "batch_size": 32, "lr": 1e-4, "amp": "none",
                            "hard_negative_start_epoch": max(epochs - 1, 0)})
        train(cfg, run_dir, progress=False)
    return root, run_dir / "best.pt"


def load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from ralbook.data.collection import Collection
    from ralbook.checkpoint import model_from_checkpoint

    def adjust(cfg):
        cfg = cfg.override(f"data.data_root={json.dumps(args.data_root)}").override(
            f"data.collection={json.dumps(args.collection)}")
        return cfg.override(f"train.amp={args.amp}") if args.amp else cfg

    cfg, model, _ = model_from_checkpoint(args.checkpoint, adjust=adjust)
    return cfg, model.eval(), Collection.from_config(cfg.data)


def truthful_file(args: argparse.Namespace) -> Path | None:
    """The collection's list of every truthful video per caption, if it ships one (generated collections do)."""
    path = Path(args.data_root) / args.collection / "GroundTruth" / f"relevant_{args.split}.json"
    return path if path.is_file() else None


def ranks_path(args: argparse.Namespace, task: str, value: str) -> Path:
    return Path(args.index_dir) / f"ranks_{task}_{value.replace(':', '_') or 'all'}.npz"


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process; the fused ranks per query (standard and truthful) go to an .npz file.

    The truthful ranks come from a second, untimed pass after time and peak memory are taken.
    """
    import numpy as np

    from ralbook.retrieval.evaluate import evaluate
    from ralbook.retrieval.index import Index, build_index, evaluate_index

    cfg, model, collection = load(args)
    truthful = truthful_file(args) if args.truthful else None
    task, value = args.child, args.value
    out: dict[str, Any] = {"task": task, "value": value}
    start = time.perf_counter()
    if task == "exhaustive":  # every query against every video, from the encodings stored in the index
        videos = Index.open(Path(args.index_dir) / "float32", model=model).videos(slice(None))
        out["load_s"] = time.perf_counter() - start
        result = evaluate(model, collection, args.split, cfg, "cpu", videos=videos, progress=False)
        out["metrics"] = result.metrics["fused"]
        out["n_queries"], out["n_videos"] = len(result.cap_ids), len(videos)
        rank = lambda: evaluate(model, collection, args.split, cfg, "cpu", videos=videos, progress=False,  # noqa: E731
                                relevant=truthful)
    elif task == "build":
        build_index(model, collection, args.split, cfg, Path(args.index_dir) / value, dtype=value, progress=False)
    else:  # two-stage: value = "K:dtype"
        k, dtype = value.split(":")
        index = Index.open(Path(args.index_dir) / dtype, model=model)
        result, missed = evaluate_index(index, collection, args.split, int(k), progress=False)
        out["metrics"], out["outside_k"] = result.metrics["fused"], missed
        out["n_queries"] = len(result.cap_ids)
        rank = lambda: evaluate_index(index, collection, args.split, int(k), progress=False,  # noqa: E731
                                      relevant=json.loads(truthful.read_text()))[0]
    out["time_s"] = time.perf_counter() - start
    out["peak_rss_gb"] = peak_rss_gb()
    if task != "build":
        ranks = {"standard": result.ranks["fused"]}
        if truthful is not None:
            ranks["truthful"] = rank().ranks["fused"]
        np.savez(ranks_path(args, task, value), **{k: np.asarray(v) for k, v in ranks.items()})
    return out


def preservation(args: argparse.Namespace, value: str) -> list[str]:
    """Paired differences two-stage - exhaustive per query, each metric, standard and truthful recall."""
    import numpy as np

    base = np.load(ranks_path(args, "exhaustive", ""))
    other = np.load(ranks_path(args, "two-stage", value))
    lines = []
    for kind in base.files:
        a, b = other[kind], base[kind]
        changed = int((a != b).sum())
        lines.append(f"    {kind} recall, two-stage - exhaustive per query, 95% CI over {len(a):,} queries "
                     f"({changed:,} ranked differently; exhaustive fused R@1/5/10/100 "
                     + " / ".join(f"{100 * np.mean(b <= k):.2f}" for k in (1, 5, 10, 100)) + "):")
        parts = []
        for metric in METRICS:
            c = compare_rankings(a, b, metric, name_a=f"two-stage K={value.split(':')[0]}", name_b="exhaustive")
            same = bool((ranking_values(a, metric) == ranking_values(b, metric)).all())
            parts.append(f"{metric} " + ("identical on every query" if same
                                         else f"{c.estimate:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"))
            if metric == "SumR" and not same:
                parts.append(describe(c, f"{kind} fused SumR"))
        lines += [f"      {part}" for part in parts]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generate-tvr-size", metavar="SCRATCH", help="generate the TVR-size collection and model here")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the generated model")
    p.add_argument("--checkpoint")
    p.add_argument("--data-root")
    p.add_argument("--collection", default="demo")
    p.add_argument("--split", default="test")
    p.add_argument("--ks", type=int, nargs="+", default=[100, 200, 500])
    p.add_argument("--float16-k", type=int, default=200, help="K of the float16-index measurement (0: skip)")
    p.add_argument("--index-dir", help="where the indexes are built (default: next to the checkpoint)")
    p.add_argument("--amp", choices=["none", "bf16"],
                   help="precision of encoding and scoring (default: the checkpoint's train.amp)")
    p.add_argument("--truthful", action="store_true",
                   help="also compare recall against every truthful video (GroundTruth/relevant_SPLIT.json; slow)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--value", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.generate_tvr_size:
        root, ckpt = generate_tvr_size(Path(args.generate_tvr_size), args.epochs)
        args.data_root, args.checkpoint = str(root), str(ckpt)
    args.index_dir = args.index_dir or str(Path(args.checkpoint).parent / "index")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f}; "
          f"{args.collection} {args.split} from {args.checkpoint}; amp {args.amp or 'of the checkpoint'}", flush=True)
    jobs = [("build", "float32"), ("exhaustive", "")] + [("two-stage", f"{k}:float32") for k in args.ks]
    if args.float16_k:
        jobs += [("build", "float16"), ("two-stage", f"{args.float16_k}:float16")]
    common = ["--checkpoint", args.checkpoint, "--data-root", args.data_root, "--collection", args.collection,
              "--split", args.split, "--index-dir", args.index_dir] + (["--amp", args.amp] if args.amp else []) \
        + (["--truthful"] if args.truthful else [])
    results, base = [], None
    for task, value in jobs:
        run = subprocess.run([sys.executable, __file__, "--child", task, "--value", value] + common,
                             capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{task} {value}: failed: {run.stderr.strip().splitlines()[-3:]}", flush=True)
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        r["load"] = os.getloadavg()[0]
        results.append(r)
        line = f"{task:<10} {value:<14} {r['time_s']:8.1f} s  peak RSS {r['peak_rss_gb']:5.2f} GB"
        if task == "exhaustive":
            base = r
            line += f"  (reading the index {r['load_s']:.1f} s)"
        if "metrics" in r:
            m = r["metrics"]
            line += "  fused " + " ".join(f"{n} {m[n]:.2f}" for n in ("R@1", "R@5", "R@10", "R@100"))
        if base is not None and task == "two-stage":
            d = {n: r["metrics"][n] - base["metrics"][n] for n in ("R@1", "R@5", "R@10", "R@100")}
            line += ("  diff " + " ".join(f"{v:+.2f}" for v in d.values())
                     + f"  outside K: {r['outside_k']} of {r['n_queries']}"
                     + f"  {base['time_s'] / r['time_s']:.1f}x faster")
        print(line, flush=True)
        if base is not None and task == "two-stage":
            lines = preservation(args, value)
            r["preservation"] = lines
            print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
