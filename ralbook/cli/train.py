"""``ralbook train``: train a model into a run directory."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ralbook.checkpoint import STATE_FORMAT, read_ralbook
from ralbook.cli.common import add_data_arguments, apply_data_arguments, data_assignments, preset_argument
from ralbook.config import Config, build_config
from ralbook.errors import ConfigError, RalbookError
from ralbook.runtime import process_group as distributed
from ralbook.files import write_json
from ralbook.runtime.device import resolve_device
from ralbook.runtime.provenance import PROVENANCE_KEY, command_line, result_provenance
from ralbook.studies.compare import compare_runs, seed_summary, to_json
from ralbook.training.rundir import CONFIG_FILE, LAST_FILE, read_run_config, train_state_from
from ralbook.training.trainer import train

SEEDS_FILE = "seeds.json"  # OUT/seeds.json: the summary of `train --seeds`


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    preset_argument(parser, help_text="dataset settings of docs/method.md#settings-per-dataset (default demo: the "
                                      "bundled collection on a CPU)")
    parser.add_argument("--epochs", type=int, help="number of epochs (train.n_epoch)")
    parser.add_argument("--batch-size", type=int, help="videos per batch (train.batch_size)")
    parser.add_argument("--out", help="run directory (default runs/PRESET)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--seeds", nargs="+", metavar="SEED",
                        help="one run per seed under OUT/seed_<n> (1,2,3 or 1 2 3), then their mean and spread "
                             "over seeds (written to OUT/seeds.json)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                        help="also write last.pt every STEPS training steps (default: at epoch ends only)")
    parser.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="under torchrun: give up when the other ranks do not answer within this time")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration (preset + options + --set) as JSON and exit")
    add_data_arguments(parser)


def _check_resume_epochs(out: Path, stored: Config, epochs: Optional[int]) -> None:
    """--epochs on --resume must equal the run's: the learning-rate schedule was laid out for that count."""
    if epochs is not None and epochs != stored.train.n_epoch:
        raise ConfigError(f"cannot resume {out} with --epochs {epochs}: the run was started for "
                          f"{stored.train.n_epoch} epochs and its learning-rate schedule (warm-up and decay) was laid "
                          f"out for that count, so continuing with another would not be the run it claims to be. "
                          f"Resume without --epochs, or train a new run with --epochs {epochs} and another --out")


def config_from_args(args: argparse.Namespace) -> tuple[Config, Path]:
    """The run's config: the preset through config.build_config (or, when resuming, the run's config.json),
    plus --epochs, --batch-size, the data options and --set. Data roots are stored absolute: a typed
    --data-root from the working directory, a preset's relative one from the repository root."""
    out = Path(args.out) if args.out else None
    if args.resume:
        if out is None:
            raise RalbookError("--resume needs --out RUN_DIR (the run to continue)")
        cfg = read_run_config(out)
        _check_resume_epochs(out, cfg, args.epochs)
        if args.batch_size is not None:
            cfg = cfg.override(f"train.batch_size={args.batch_size}")
        return apply_data_arguments(cfg, args), out
    name = args.preset or "demo"
    extra = [f"train.batch_size={args.batch_size}"] if args.batch_size is not None else []
    cfg = build_config(name, epochs=args.epochs or 0,
                       overrides=[*data_assignments(args), *extra, *(args.overrides or [])])
    return cfg, out or Path("runs") / name


def resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues this run."""
    words = ["python", "-m", "ralbook", "train", "--out", str(out), "--resume"]
    if args.checkpoint_every:
        words += ["--checkpoint-every", str(args.checkpoint_every)]
    if args.no_progress:
        words.append("--no-progress")
    return shlex.join(words)


def interrupted_message(args: argparse.Namespace, out: Path) -> str:
    """What Ctrl-C left in the run directory, and how to continue."""
    last = out / LAST_FILE
    if not last.is_file():
        hint = "" if args.checkpoint_every else " (--checkpoint-every STEPS also keeps unfinished epochs)"
        return (f"interrupted before the first checkpoint: nothing kept in {out}{hint}; start again with the same "
                f"command, or resume (it starts from the beginning): {resume_command(args, out)}")
    ckpt, _ = read_ralbook(last, (STATE_FORMAT,))
    s = train_state_from(ckpt["state"], last)
    if s.step_in_epoch:
        kept = (f"epoch {s.epoch} (counting from 0) up to step {s.step_in_epoch}, global step {s.global_step} "
                f"(--checkpoint-every {args.checkpoint_every})")
    else:
        kept = f"{s.epoch} completed epoch(s), global step {s.global_step}"
    return f"interrupted: {last} keeps {kept}; resume with: {resume_command(args, out)}"


def parse_seeds(values: Optional[Sequence[str]]) -> list[int]:
    """--seeds "1,2,3" or 1 2 3 (or both mixed) -> [1, 2, 3]; RalbookError for anything else."""
    words = [w for v in (values or []) for w in str(v).replace(",", " ").split()]
    try:
        seeds = [int(w) for w in words]
    except ValueError:
        raise RalbookError(f"--seeds takes whole numbers such as 1,2,3 or 1 2 3, got {' '.join(values or [])!r}") \
            from None
    if values and not seeds:
        raise RalbookError("--seeds is empty; give seeds such as 1,2,3")
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise RalbookError(f"--seeds must be distinct numbers >= 0, got {seeds}")
    return seeds


def seed_jobs(args: argparse.Namespace, seeds: Sequence[int]) -> list[tuple[Config, Path, bool]]:
    """(config, run directory OUT/seed_<n>, resume?) for each seed; with --resume a seed's run that exists is
    continued and one that does not is started from the settings of one that does."""
    if any(o.strip().startswith("train.seed") for o in args.overrides):
        raise RalbookError("--seeds sets train.seed for each run; drop --set train.seed=...")
    base = Path(args.out) if args.out else Path("runs") / (args.preset or "demo")
    dirs = {seed: base / f"seed_{seed}" for seed in seeds}
    existing = [d for d in dirs.values() if (d / CONFIG_FILE).is_file()]
    if args.resume and not existing:
        raise RalbookError(f"nothing to resume in {base}: none of {', '.join(d.name for d in dirs.values())} "
                           f"holds a {CONFIG_FILE}")
    jobs = []
    for seed, run_dir in dirs.items():
        resume = args.resume and run_dir in existing
        source = run_dir if resume or not args.resume else existing[0]
        cfg, _ = config_from_args(argparse.Namespace(**{**vars(args), "out": str(source)}))
        jobs.append((cfg if resume else cfg.override(f"train.seed={seed}"), run_dir, resume))
    return jobs


def run_train(args: argparse.Namespace) -> int:
    seeds = parse_seeds(getattr(args, "seeds", None))
    if seeds:
        jobs = seed_jobs(args, seeds)
    else:
        cfg, out = config_from_args(args)
        jobs = [(cfg, out, args.resume)]
    if args.print_config:
        for cfg, out, _ in jobs:
            print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    results = _train_jobs(args, jobs)
    if isinstance(results, int):  # interrupted: the exit status
        return results
    if results is None or not seeds:  # not the main rank, or a single run
        return 0
    base = jobs[0][1].parent
    comp = compare_runs([run_dir for _, run_dir, _ in jobs], "test")
    print(seed_summary(comp))
    summary = to_json(comp)
    summary[PROVENANCE_KEY] = result_provenance(split="test", n_boot=comp.n_boot, seed=comp.seed,
                                                argv=getattr(args, "argv", None))
    write_json(base / SEEDS_FILE, summary, indent=1)
    print(f"seed summary written to {base / SEEDS_FILE}")
    return 0


def _train_jobs(args: argparse.Namespace, jobs: Sequence[tuple[Config, Path, bool]]) -> Optional[list[Any] | int]:
    """Train each (config, run directory, resume?) in turn; the results on the main rank, None on the others;
    130 after Ctrl-C (with what was kept and the resume command printed)."""
    # under torchrun: join the other ranks (a no-op for a single process)
    world = distributed.init_from_env(resolve_device(jobs[0][0].train.device), args.dist_timeout)
    command = command_line(getattr(args, "argv", None))
    results = []
    out = jobs[0][1]
    try:
        for i, (cfg, out, resume) in enumerate(jobs):
            if len(jobs) > 1 and world.is_main:
                print(f"seed {cfg.train.seed} ({i + 1} of {len(jobs)}): {out}", flush=True)
            results.append(train(cfg, out, resume=resume, progress=True, bars=not args.no_progress,
                                 checkpoint_every=args.checkpoint_every, command=command, overrides=args.overrides))
            if world.is_main:
                _print_result(results[-1])
    except KeyboardInterrupt:
        if world.is_main:
            print(interrupted_message(args, out), file=sys.stderr)
        return 130
    except RuntimeError as err:  # gloo reports a vanished peer as a plain RuntimeError
        if not (world.distributed and distributed.is_communication_error(err)):
            raise
        raise RalbookError(f"rank {world.rank}: lost the other ranks (one failed or stalled for more than "
                           f"--dist-timeout {args.dist_timeout:.0f} s; its own message says why): "
                           f"{' '.join(str(err).split())[:80]}") from err
    finally:
        distributed.shutdown()
    return results if world.is_main else None


def _print_result(result: Any) -> None:
    nan = float("nan")
    val_sumr = result.best_val.get("fused", {}).get("SumR", nan)
    test_sumr = (result.test or {}).get("fused", {}).get("SumR", nan)
    print(f"run {result.run_dir}: best epoch {result.best_epoch} (val SumR {val_sumr:.1f}); test SumR {test_sumr:.1f}")
