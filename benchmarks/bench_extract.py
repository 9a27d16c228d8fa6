"""Frames per second of ``extract``'s image encoding: batches that span videos (the previous policy)
against batches of one video each, starting at fixed offsets (the current one, which makes a
resumed extraction end with the same bytes).

    python benchmarks/bench_extract.py                         # ViT-B/32 shapes, 12 videos, batch 64
    python benchmarks/bench_extract.py --lengths 5 40 180 --batch-size 32 --rounds 3

The image tower is a randomly initialised CLIP vision model with the shapes of ViT-B/32 at 224 px
(nothing is downloaded; speed depends on the shapes, not the weights). Frames are random images;
decoding is not timed. Per-video batching only adds the last, shorter batch of each video, so its
cost grows with the number of videos per frame: the default lengths (frames at 1 fps) mix short
and long clips. This is a measurement script, not a test.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from statistics import median
from typing import Callable, Sequence

import numpy as np
import torch

DEFAULT_LENGTHS = [8, 15, 23, 30, 41, 52, 60, 75, 90, 12, 34, 120]


def vit_b32(image: int = 224) -> Callable[[np.ndarray], np.ndarray]:
    """encode(frames (n, S, S, 3) uint8) -> (n, 512): a random CLIP vision tower of ViT-B/32's size."""
    import transformers

    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, image_size=image, patch_size=32)
    tower = transformers.CLIPVisionModelWithProjection(config).eval()

    @torch.no_grad()
    def encode(frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        return tower(pixel_values=x).image_embeds.numpy()

    return encode


def spanning(lengths: Sequence[int], batch: int) -> list[int]:
    """Batch sizes when frames of consecutive videos share batches."""
    total = sum(lengths)
    return [batch] * (total // batch) + ([total % batch] if total % batch else [])


def per_video(lengths: Sequence[int], batch: int) -> list[int]:
    """Batch sizes when every batch holds frames of one video, from its frame 0 on."""
    return [b for n in lengths for b in [batch] * (n // batch) + ([n % batch] if n % batch else [])]


def time_batches(encode: Callable[[np.ndarray], np.ndarray], sizes: list[int], image: int) -> float:
    """Seconds to encode batches of these sizes (random frames)."""
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (max(sizes), image, image, 3), dtype=np.uint8)
    start = time.perf_counter()
    for n in sizes:
        encode(pool[:n])
    return time.perf_counter() - start


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS, help="frames per video")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="rounds, policies interleaved; the median is shown")
    parser.add_argument("--image", type=int, default=224)
    args = parser.parse_args()
    encode = vit_b32(args.image)
    encode(np.zeros((2, args.image, args.image, 3), np.uint8))   # warm-up
    policies = {"spanning videos (before)": spanning(args.lengths, args.batch_size),
                "one video per batch (now)": per_video(args.lengths, args.batch_size)}
    seconds: dict[str, list[float]] = {k: [] for k in policies}
    for _ in range(args.rounds):
        for name, sizes in policies.items():
            seconds[name].append(time_batches(encode, sizes, args.image))
    frames = sum(args.lengths)
    print(f"CPU {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; {len(args.lengths)} "
          f"videos, {frames} frames, batch {args.batch_size}, ViT-B/32 shapes at {args.image} px")
    base = median(seconds["spanning videos (before)"])
    for name, sizes in policies.items():
        s = median(seconds[name])
        print(f"  {name:28s} {len(sizes):3d} batches  {frames / s:7.1f} frames/s  ({s:.2f} s; "
              f"{'x%.3f' % (s / base)} time; rounds {', '.join(f'{v:.2f}' for v in seconds[name])})")


if __name__ == "__main__":
    main()
