"""Thread count and OpenMP wait policy, quiet and beside a busy process: a demo epoch and a TVR-size step.

    python benchmarks/bench_threads.py                     # both workloads, 2 rounds, all settings
    python benchmarks/bench_threads.py --work demo --rounds 3 --settings before after

Settings (each measured in a fresh process, so the OpenMP runtime starts with its environment):

* ``before``  torch's defaults: one thread per core, OpenMP's default (spinning) wait policy;
* ``after``   ralbook's choice: ``ralbook.runtime.threads.configure_threads()`` (re-checked every few seconds
  while training), OpenMP's default wait policy;
* ``short-spin``: the same with idle threads spinning only briefly (``GOMP_SPINCOUNT=10000``), the
  previous version's default (it cost about 10% on a free machine and saved nothing beside a busy one);
* ``1-passive`` / ``2-passive``: a fixed count with the passive policy.

Conditions: ``quiet`` (nothing started by this script) and ``busy`` (a one-thread busy loop runs in
another process during the measurement). The rounds interleave settings and conditions, so the
ratios compare measurements taken minutes apart. The machine's load average is printed with every
figure: on a shared machine "quiet" only means that this script added nothing.
This is a measurement script, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "before": {"wait": None, "threads": "default"},
    "after": {"wait": None, "threads": "auto"},
    "short-spin": {"wait": None, "spin": "10000", "threads": "auto"},
    "1-passive": {"wait": "PASSIVE", "threads": "1"},
    "2-passive": {"wait": "PASSIVE", "threads": "2"},
}


# ----------------------------------------------------------------------------- child: one measurement


def child(work: str, threads: str, steps: int, demo_steps: int) -> dict[str, Any]:
    """Runs in a fresh process: set the threads, time the work, return seconds."""
    sys.path.insert(0, str(ROOT))
    import torch

    from ralbook.runtime import threads as runtime

    if threads == "auto":
        runtime.configure_threads(announce=None)
    elif threads != "default":
        torch.set_num_threads(int(threads))
    used = torch.get_num_threads()
    seconds = demo_epoch(demo_steps) if work == "demo" else tvr_steps(steps)
    return {"seconds": seconds, "threads": used}


def demo_epoch(steps: int) -> float:
    """Seconds of the demo preset's first epoch on the bundled data (no validation); ``steps`` > 0: of its
    first ``steps`` training steps only (an epoch has 19)."""
    import tempfile

    from ralbook.config import preset
    from ralbook.training.trainer import Trainer
    from ralbook.training.reproducibility import epoch_batches

    cfg = preset("demo")
    cfg.data.data_root = str(ROOT / "data")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, progress=False)
        batches = epoch_batches(len(trainer.splits.train_videos), cfg.train.batch_size, cfg.train.seed, 0)
        batches = batches[:steps] if steps > 0 else batches
        trainer.model.train()
        start = time.perf_counter()
        for batch in trainer._loader(batches):
            trainer.train_step(batch, hard_negatives=False)
        return time.perf_counter() - start


def tvr_steps(steps: int) -> float:
    """Mean seconds of a training step at the TVR sizes of bench_engine.py (batch 32), after one warm-up."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_engine

    args = argparse.Namespace(preset="tvr", visual_dim=1024, text_dim=768, hidden=384, heads=4, amp="none", set=[],
                              query_chunk=0, video_chunk=0, device="cpu", compile=False, batch_size=32, captions=5,
                              warmup_steps=1, steps=steps, hard=False)
    return bench_engine.measure_train(args)["step_s"]


# ----------------------------------------------------------------------------- parent: the table


def measure(work: str, setting: str, busy: bool, steps: int, demo_steps: int, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "RALBOOK_THREADS", "GOMP_SPINCOUNT"):
        env.pop(name, None)
    spec = SETTINGS[setting]
    if spec["wait"]:
        env["OMP_WAIT_POLICY"] = spec["wait"]
    if spec.get("spin"):
        env["GOMP_SPINCOUNT"] = spec["spin"]
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        load = os.getloadavg()[0]
        command = [sys.executable, __file__, "--child", work, spec["threads"], str(steps), str(demo_steps)]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # a collapsed run: recorded as "more than the timeout"
        return {"work": work, "setting": setting, "busy": busy, "load": load, "seconds": float("inf"), "threads": None}
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
    if run.returncode != 0:
        raise SystemExit(f"{work} {setting}: failed: {run.stderr.strip()[-500:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return {"work": work, "setting": setting, "busy": busy, "load": load, **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", nargs="*", default=["demo", "tvr"], choices=["demo", "tvr"])
    p.add_argument("--settings", nargs="*", default=["before", "after", "1-passive", "2-passive"],
                   choices=list(SETTINGS))
    p.add_argument("--conditions", nargs="*", default=["quiet", "busy"], choices=["quiet", "busy"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed TVR-size steps per measurement")
    p.add_argument("--demo-steps", type=int, default=0, help="time only this many demo steps (0: the epoch, 19)")
    p.add_argument("--timeout", type=float, default=900, help="give up on one measurement after this many seconds")
    p.add_argument("--json", help="also write every measurement to this file")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        work, threads, steps, demo_steps = args.child
        print(json.dumps(child(work, threads, int(steps), int(demo_steps))))
        return
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    print(f"{cpu}, {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for r in range(args.rounds):
        for work in args.work:
            for setting in args.settings:
                for condition in args.conditions:
                    row = measure(work, setting, condition == "busy", args.steps, args.demo_steps, args.timeout)
                    rows.append(row)
                    unit = ("s/epoch" if not args.demo_steps else f"s/{args.demo_steps} steps") if work == "demo" \
                        else "s/step"
                    print(f"round {r + 1} {work:4} {setting:9} {condition:5}: {row['seconds']:7.2f} {unit}, "
                          f"{row['threads']} thread(s), load {row['load']:.2f}", flush=True)
    print("\nmedians (busy / quiet of the same setting):")
    for work in args.work:
        for setting in args.settings:
            quiet = [x["seconds"] for x in rows if x["work"] == work and x["setting"] == setting and not x["busy"]]
            busy = [x["seconds"] for x in rows if x["work"] == work and x["setting"] == setting and x["busy"]]
            q, b = (median(quiet) if quiet else float("nan")), (median(busy) if busy else float("nan"))
            print(f"  {work:4} {setting:9}  quiet {q:7.2f}  busy {b:7.2f}  ratio {b / q:5.2f}", flush=True)
        before = [x["seconds"] for x in rows if x["work"] == work and x["setting"] == "before" and not x["busy"]]
        after = [x["seconds"] for x in rows if x["work"] == work and x["setting"] == "after" and x["busy"]]
        if before and after:
            print(f"  {work:4} after, busy / before, quiet: {median(after) / median(before):5.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
