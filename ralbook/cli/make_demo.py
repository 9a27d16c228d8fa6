"""``ralbook make-demo``: (re)generate the bundled demo collection."""
from __future__ import annotations

import argparse

from ralbook.data.demo import DemoParams, generate_demo


def add_make_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data", help="folder that receives demo/ (default: data)")
    parser.add_argument("--seed", type=int, default=DemoParams.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=DemoParams.n_train, help="training videos")
    parser.add_argument("--n-val", type=int, default=DemoParams.n_val, help="validation videos")
    parser.add_argument("--n-test", type=int, default=DemoParams.n_test, help="test videos")
    parser.add_argument("--difficulty", type=float, default=DemoParams.difficulty,
                        help="noise scale: 0 noiseless, 1 default, 2 hard")
    parser.add_argument("--ambiguous-fraction", type=float, default=DemoParams.ambiguous_fraction,
                        help="share of ambiguous captions")


def run_make_demo(args: argparse.Namespace) -> int:
    out = generate_demo(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                        difficulty=args.difficulty, ambiguous_fraction=args.ambiguous_fraction, progress=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"demo collection written to {out} ({size / 2**20:.1f} MiB)")
    return 0
