"""Measure the engine on this machine: training step time, peak memory, evaluation time, feature reading.

Synthetic in-memory inputs of the sizes used for the reference figures in issue 4 (hidden 384,
4 heads, Dv 1024, Dt 768, 5 captions per video, 20-200 frames per video), so no data is needed:

    python benchmarks/bench_engine.py                          # batch 32 and 128, eval 200x1000 and 1000x5000
    python benchmarks/bench_engine.py --batch-sizes 32 --eval 200x1000 --steps 3
    python benchmarks/bench_engine.py --preset act --device cuda --amp bf16
    python benchmarks/bench_engine.py --batch-sizes 128 --eval --set model.checkpoint_branches=true
    python benchmarks/bench_engine.py --batch-sizes --eval --read 500     # feature reading only
    python benchmarks/bench_engine.py --backbones gmmformer_v2 gmmformer ms_sl --batch-sizes 32 --eval 200x1000

Each measurement runs in its own process, so that its peak memory (resident set size on CPU,
``max_memory_allocated`` on CUDA) is its own. This is a measurement script, not a test.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ralbook.config import BACKBONES, Config, preset
from ralbook.runtime.precision import autocast
from ralbook.retrieval.evaluate import concat_encodings, rank_encoded
from ralbook.runtime.device import resolve_device
from ralbook.training.trainer import _float_output


def bench_config(args: argparse.Namespace) -> Config:
    cfg = preset(args.preset, data={"visual_dim": args.visual_dim, "text_dim": args.text_dim},
                 model={"hidden_size": args.hidden, "n_heads": args.heads})
    cfg.train.amp = args.amp
    for assignment in args.set:
        cfg = cfg.override(assignment)
    args.query_chunk = args.query_chunk or cfg.train.eval_query_chunk
    args.video_chunk = args.video_chunk or cfg.train.eval_video_chunk
    return cfg


def synthetic_videos(n: int, cfg: Config, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Clip (n, 32, Dv) and frame (n, 128, Dv) inputs with 20..200 frames per video (binned to <= 128)."""
    dv, lf = cfg.data.visual_dim, cfg.data.max_frames
    n_frames = torch.randint(20, 201, (n,), generator=generator).clamp(max=lf)
    mask = (torch.arange(lf)[None] < n_frames[:, None]).float()
    frames = torch.nn.functional.normalize(torch.randn(n, lf, dv, generator=generator), dim=-1) * mask[..., None]
    clips = torch.nn.functional.normalize(torch.randn(n, cfg.data.n_clips, dv, generator=generator), dim=-1)
    return {"clip_feats": clips, "frame_feats": frames, "frame_mask": mask}


def synthetic_queries(n: int, cfg: Config, generator: torch.Generator, pad_to: int = 0) -> dict[str, torch.Tensor]:
    """Query token rows (n, Lq, Dt), 8..30 tokens each."""
    lengths = torch.randint(8, cfg.data.max_desc_len + 1, (n,), generator=generator)
    lq = pad_to or int(lengths.max())
    mask = (torch.arange(lq)[None] < lengths[:, None]).float()
    feats = torch.nn.functional.normalize(torch.randn(n, lq, cfg.data.text_dim, generator=generator), dim=-1)
    return {"query_feats": feats * mask[..., None], "query_mask": mask}


def train_batch(batch_size: int, captions: int, cfg: Config, generator: torch.Generator) -> dict[str, Any]:
    batch = {**synthetic_videos(batch_size, cfg, generator), **synthetic_queries(batch_size * captions, cfg, generator)}
    batch["labels"] = torch.arange(batch_size).repeat_interleave(captions)
    return batch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def peak_device_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_train(args: argparse.Namespace) -> dict[str, Any]:
    from ralbook.losses import Objective
    from ralbook.model import build_model
    from ralbook.training.optim import build_optimizer

    cfg, device = bench_config(args), resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    fmodel = torch.compile(model) if args.compile else model
    objective = Objective(cfg.loss)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.warmup, cfg.train.weight_decay, 1000)
    batch = {k: v.to(device) for k, v in train_batch(args.batch_size, args.captions, cfg,
                                                      torch.Generator().manual_seed(1)).items()}
    baseline = peak_rss_gb()
    times = []
    for i in range(args.warmup_steps + args.steps):
        sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cfg.train.amp):
            out = fmodel(batch)
        total, _ = objective(_float_output(out), batch["labels"], hard_negatives=args.hard)
        total.backward()
        optimizer.step()
        sync(device)
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    return {"task": "train", "batch": args.batch_size, "queries": args.batch_size * args.captions,
            "step_s": sum(times) / len(times), "min_step_s": min(times), "peak_rss_gb": peak_rss_gb(),
            "rss_before_gb": baseline, "peak_device_gb": peak_device_gb(device), "device": str(device)}


def encode_in_batches(encode: Any, inputs: dict[str, torch.Tensor], size: int, device: torch.device) -> Any:
    """One encoder over ``inputs`` in slices of ``size`` rows, concatenated."""
    parts = []
    for s in range(0, len(next(iter(inputs.values()))), size):
        parts.append(encode(*(v[s:s + size].to(device) for v in inputs.values())))
    return concat_encodings(parts)


def timed(device: torch.device, fn: Any) -> tuple[Any, float, float]:
    """(result, seconds, FLOPs): FLOPs counted by torch's FlopCounterMode in a separate, untimed call."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start, float(counter.get_total_flops())


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """GFLOP/s of a plain (m, k) x (k, n) matrix product in ``dtype`` (best of ``repeats``)."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best / 1e9


def measure_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluation time, and the achieved GFLOP/s of video encoding and scoring next to plain matrix products."""
    from ralbook.model import build_model

    cfg, device = bench_config(args), resolve_device(args.device)
    n_videos, n_queries = (int(x) for x in args.eval_size.split("x"))
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).eval().requires_grad_(False)  # (FlopCounterMode needs no grad)
    g = torch.Generator().manual_seed(2)
    videos_in = synthetic_videos(n_videos, cfg, g)
    queries_in = synthetic_queries(n_queries, cfg, g, pad_to=cfg.data.max_desc_len)
    relevant = torch.randint(0, n_videos, (n_queries, 1), generator=g)
    with torch.no_grad(), autocast(device, cfg.train.amp):
        videos, encode_s, encode_flops = timed(device, lambda: encode_in_batches(
            model.encode_videos, videos_in, args.video_batch, device))
        queries, query_s, _ = timed(device, lambda: encode_in_batches(
            model.encode_queries, queries_in, args.query_chunk, device))
        result, score_s, score_flops = timed(device, lambda: rank_encoded(
            model, queries, videos, relevant, args.query_chunk, args.video_chunk))
    d, lf, lq = cfg.model.hidden_size, cfg.model.max_frames, cfg.data.max_desc_len
    # plain products of the shapes that dominate: the feed-forward layer of a video batch, one scoring chunk
    rates = {f"{what}_{name}": matmul_rate(m, k, n, dtype, device)
             for what, (m, k, n) in (("encode", (args.video_batch * lf, d, 4 * d)),
                                     ("score", (args.query_chunk * lq, d, args.video_chunk * lf)))
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return {"task": "eval", "videos": n_videos, "queries": n_queries, "eval_s": encode_s + query_s + score_s,
            "encode_videos_s": encode_s, "encode_queries_s": query_s, "score_s": score_s,
            "encode_gflops": encode_flops / 1e9, "score_gflops": score_flops / 1e9,
            "matmul_gflop_per_s": rates, "query_chunk": args.query_chunk, "video_chunk": args.video_chunk,
            "peak_rss_gb": peak_rss_gb(), "peak_device_gb": peak_device_gb(device), "device": str(device),
            "fused_SumR_random_model": result.metrics["fused"]["SumR"]}


def bf16_instructions() -> str:
    """The CPU's bf16 instructions (amx_bf16, avx512_bf16) and what train.amp=auto means here."""
    from ralbook.runtime.precision import cpu_bf16_flags, resolve_amp

    flags = cpu_bf16_flags()
    named = "unknown (no /proc/cpuinfo)" if flags is None else ", ".join(sorted(flags)) or "none"
    return f"{named} (train.amp=auto: {resolve_amp('auto', torch.device('cpu'))})"


def measure_read(args: argparse.Namespace) -> dict[str, Any]:
    """ms per video to read one video's inputs (32 clips + up to 128 frames) from a release-layout feature.bin."""
    from ralbook.data.collection import Collection
    from ralbook.data.demo import generate_demo

    with tempfile.TemporaryDirectory() as tmp:
        generate_demo(tmp, n_train=args.read, n_val=2, n_test=2, visual_dim=args.visual_dim, text_dim=args.text_dim,
                      min_frames=20, max_frames=200, frames_median=100)
        collection = Collection(tmp, "demo")
        videos = collection.videos("train")
        collection.video_arrays(videos[0])  # opens the memory map and the id index
        start = time.perf_counter()
        for video in videos:
            collection.video_arrays(video)
        elapsed = time.perf_counter() - start
        frames = sum(collection.n_frames(v) for v in videos) / len(videos)
        collection.close()
    return {"task": "read", "videos": len(videos), "ms_per_video": 1e3 * elapsed / len(videos),
            "frames_per_video": frames}


def child_args(args: argparse.Namespace, task: str, value: str) -> list[str]:
    common = ["--preset", args.preset, "--hidden", str(args.hidden), "--heads", str(args.heads),
              "--visual-dim", str(args.visual_dim), "--text-dim", str(args.text_dim), "--device", args.device,
              "--amp", args.amp, "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
              "--captions", str(args.captions), "--query-chunk", str(args.query_chunk),
              "--video-chunk", str(args.video_chunk), "--video-batch", str(args.video_batch),
              "--threads", str(args.threads)] + (["--compile"] if args.compile else []) + (
              ["--hard"] if args.hard else []) + [f"--set={a}" for a in args.set]
    extra = {"train": ["--batch-size", value], "eval": ["--eval-size", value], "read": ["--read", value]}[task]
    return [sys.executable, __file__, "--child", task] + common + extra


def achieved_rates(r: dict[str, Any], amp: str) -> str:
    """GFLOP/s of encoding and scoring, and their fraction of the plain matrix product in fp32 and bf16."""
    lines = []
    for what, seconds in (("encode", r["encode_videos_s"]), ("score", r["score_s"])):
        rate = r[f"{what}_gflops"] / seconds
        plain = r["matmul_gflop_per_s"]
        fp32, bf16 = plain[f"{what}_fp32"], plain[f"{what}_bf16"]
        lines.append(f"  {what:<6}: {r[what + '_gflops']:.0f} GFLOP in {seconds:.2f} s = {rate:.1f} GFLOP/s "
                     f"({amp}); plain matmul of similar size {fp32:.1f} GFLOP/s fp32, {bf16:.1f} GFLOP/s bf16: "
                     f"{100 * rate / fp32:.0f}% of fp32, {100 * rate / bf16:.0f}% of bf16")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tvr", choices=["demo", "tvr", "act", "cha"])
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--visual-dim", type=int, default=1024)
    p.add_argument("--text-dim", type=int, default=768)
    p.add_argument("--captions", type=int, default=5, help="captions per video in a training batch")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128])
    p.add_argument("--eval", dest="eval_sizes", nargs="*", default=["200x1000", "1000x5000"],
                   help="VIDEOSxQUERIES evaluation sizes")
    p.add_argument("--read", type=int, default=200, help="videos for the feature-reading measurement (0: skip)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after the warm-up ones)")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--hard", action="store_true", help="hard-negative triplets (epochs >= 20)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--query-chunk", type=int, default=0, help="queries scored at once (0: the preset's)")
    p.add_argument("--video-chunk", type=int, default=0, help="videos scored at once (0: the preset's)")
    p.add_argument("--video-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--backbones", nargs="+", default=["gmmformer_v2"], choices=list(BACKBONES),
                   help="measure each backbone (its recipe; RAL switches as the preset and --set say)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.checkpoint_branches=true (repeatable)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", choices=["train", "eval", "read"], help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--eval-size", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        measure = {"train": measure_train, "eval": measure_eval, "read": measure_read}[args.child]
        print(json.dumps(measure(args)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {resolve_device(args.device)}, "
          f"preset {args.preset}: hidden {args.hidden}, heads {args.heads}, Dv {args.visual_dim}, Dt {args.text_dim}, "
          f"amp {args.amp}, compile {args.compile}" + "".join(f", {a}" for a in args.set)
          + f"; bf16 instructions: {bf16_instructions()}", flush=True)
    results = []
    settings = list(args.set)
    for backbone in args.backbones:
        args.set = [f"model.backbone={backbone}"] + settings
        if len(args.backbones) > 1:
            print(f"backbone {backbone}:", flush=True)
        jobs = [("train", str(b)) for b in args.batch_sizes] + [("eval", s) for s in args.eval_sizes]
        jobs += [("read", str(args.read))] if args.read else []
        for task, value in jobs:
            run = subprocess.run(child_args(args, task, value), capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{task} {value}: failed (exit {run.returncode}): {run.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            results.append({**r, "backbone": backbone})
            dev = f", device peak {r['peak_device_gb']:.2f} GB" if r.get("peak_device_gb") is not None else ""
            if task == "read":
                print(f"feature reading: {r['ms_per_video']:.2f} ms per video ({r['videos']} videos, "
                      f"{r['frames_per_video']:.0f} frames of Dv {args.visual_dim} on average)", flush=True)
            elif task == "train":
                print(f"train batch {r['batch']:>4} ({r['queries']} queries): {r['step_s']:.2f} s/step "
                      f"(min {r['min_step_s']:.2f}), peak RSS {r['peak_rss_gb']:.2f} GB "
                      f"(before the steps {r['rss_before_gb']:.2f} GB){dev}", flush=True)
            else:
                print(f"eval {r['videos']} videos x {r['queries']} queries: {r['eval_s']:.2f} s "
                      f"(video encoding {r['encode_videos_s']:.2f} s; chunks {r['query_chunk']} queries x "
                      f"{r['video_chunk']} videos), peak RSS {r['peak_rss_gb']:.2f} GB{dev}", flush=True)
                print(achieved_rates(r, args.amp), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
