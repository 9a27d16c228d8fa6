"""``ralbook train``: train a model into a run directory."""
from __future__ import annotations

import argparse
from pathlib import Path

from ralbook.cli.common import add_data_arguments, apply_data_arguments
from ralbook.config import Config, PRESETS, preset
from ralbook.errors import RalbookError
from ralbook.runtime import process_group as distributed
from ralbook.runtime.device import resolve_device
from ralbook.training.rundir import read_run_config
from ralbook.training.trainer import train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="dataset settings of docs/method.md#settings-per-dataset (demo: the bundled collection on a CPU)")
    parser.add_argument("--epochs", type=int, help="number of epochs (train.n_epoch)")
    parser.add_argument("--batch-size", type=int, help="videos per batch (train.batch_size)")
    parser.add_argument("--out", help="run directory (default runs/PRESET)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                        help="also write last.pt every STEPS training steps (default: at epoch ends only)")
    parser.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="under torchrun: give up when the other ranks do not answer within this time")
    add_data_arguments(parser)


def config_from_args(args: argparse.Namespace) -> tuple[Config, Path]:
    """The run's config: the preset (or, when resuming, the run's config.json) plus the command-line options."""
    out = Path(args.out) if args.out else None
    if args.resume:
        if out is None:
            raise RalbookError("--resume needs --out RUN_DIR (the run to continue)")
        cfg = read_run_config(out)
    else:
        name = args.preset or "demo"
        try:
            cfg = preset(name)
        except KeyError as err:
            raise RalbookError(str(err)) from err
        out = out or Path("runs") / name
    for flag, key in (("epochs", "train.n_epoch"), ("batch_size", "train.batch_size")):
        value = getattr(args, flag)
        if value is not None:
            cfg = cfg.override(f"{key}={value}")
    cfg = apply_data_arguments(cfg, args)
    return cfg, out


def run_train(args: argparse.Namespace) -> int:

    cfg, out = config_from_args(args)
    # under torchrun: join the other ranks (a no-op for a single process)
    world = distributed.init_from_env(resolve_device(cfg.train.device), args.dist_timeout)
    try:
        result = train(cfg, out, resume=args.resume, progress=not args.no_progress,
                       checkpoint_every=args.checkpoint_every)
    except RuntimeError as err:  # gloo reports a vanished peer as a plain RuntimeError
        if not (world.distributed and distributed.is_communication_error(err)):
            raise
        raise RalbookError(f"rank {world.rank}: lost the other ranks (one failed or stalled for more than "
                           f"--dist-timeout {args.dist_timeout:.0f} s; its own message says why): "
                           f"{' '.join(str(err).split())[:80]}") from err
    finally:
        distributed.shutdown()
    if not world.is_main:
        return 0
    nan = float("nan")
    val_sumr = result.best_val.get("fused", {}).get("SumR", nan)
    test_sumr = (result.test or {}).get("fused", {}).get("SumR", nan)
    print(f"run {result.run_dir}: best epoch {result.best_epoch} (val SumR {val_sumr:.1f}); test SumR {test_sumr:.1f}")
    return 0
