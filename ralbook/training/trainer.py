"""Training: the authors' loop (docs/method.md#training-objective and #optimisation) made device-agnostic, resumable and reproducible.

A run directory holds

* ``config.json``     the resolved configuration;
* ``metrics.jsonl``   one JSON line per epoch: mean of every weighted loss part, learning rate,
  validation R@1/5/10/100/SumR for the clip, frame and fused scores, wall time;
* ``best.pt``         model weights + config of the best validation epoch (fused SumR);
* ``last.pt``         the whole training state: model, optimizer (with its schedule position),
  gradient scaler, epoch, step within the epoch, early-stopping state, loss sums of the current
  epoch and the random states of Python, NumPy and torch (CUDA/MPS when present);
* ``test_metrics.json`` the test split evaluated with ``best.pt`` (metrics and per-query ranks), written at the end.

The files' formats live in training/rundir.py, the checkpoints' in training/checkpointing.py; this module
is the loop that decides when they are written. Everything is written atomically, so a run killed at any
moment resumes (``resume=True`` / ``--resume``) from its last checkpoint and ends with the same numbers as
an uninterrupted run: the data order of epoch e is a permutation drawn from ``seed + e`` alone, and the RNG
states are restored. Early stopping follows the authors' main.py: an epoch improves when its fused SumR
is strictly higher than the best so far; training stops once more than ``patience`` epochs in a
row did not improve. Epochs count from 0; hard negatives are used from epoch
``hard_negative_start_epoch`` on (as in main.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

from ralbook.config import Config, require_data_root
from ralbook.data.collection import Collection, check_dims
from ralbook.data.datasets import TrainDataset, collate_train
from ralbook.errors import DataError, NonFiniteError, RalbookError, shorten
from ralbook.losses import Objective
from ralbook.model import build_model
from ralbook.retrieval.evaluate import EvalResult, evaluate, format_metrics
from ralbook.files import write_json
from ralbook.runtime.device import resolve_device, to_device
from ralbook.runtime.environment import ENVIRONMENT_KEY
from ralbook.runtime.provenance import finish_record, now, run_record
from ralbook.runtime.precision import OVERRIDE_VARIABLE, _host_lacks_bf16, autocast, cpu_probe, describe_amp, resolve_amp
from ralbook.runtime.process_group import (barrier, check_batches, current_world, describe, gather_objects,
                                           rank_device, share)
from ralbook.runtime.progress import use_bars
from ralbook.runtime.machine_log import machine_note
from ralbook.runtime.threads import Requested, configure_threads, recheck_threads, recheck_threads_now_and_then
from ralbook.runtime.workers import workers_for
from ralbook.training.data_parallel import dropout_seed, evaluate_shared, wrap_for_training
from ralbook.training.optim import build_optimizer
from ralbook.training.reproducibility import deterministic_kernels, epoch_batches, seed_everything
from ralbook.training.checkpointing import load_best, restore_last, save_best, save_last
from ralbook.training.rundir import (BEST_FILE, CONFIG_FILE, LAST_FILE, PathLike, TEST_FILE, TrainState,
                                     _prepare_run_dir, _recorded_amp, _run_config, record_epoch, test_record)
from ralbook.training.splits import plan_splits
from ralbook.training.steplog import StepLog


Callback = Callable[[str, dict[str, Any]], None]

# ----------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """What a finished run gives back; the files in ``run_dir`` hold the details."""

    run_dir: Path
    best_epoch: int
    best_val: dict[str, dict[str, float]]
    test: Optional[dict[str, dict[str, float]]]
    epochs_run: int
    stopped_early: bool


# ----------------------------------------------------------------------------- the trainer


def _float_output(out: Any) -> Any:
    """Cast every floating tensor of a ModelOutput to float32 (losses and the Hungarian step run in fp32)."""
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32:
            setattr(out, f.name, value.float())
    return out


def feature_sizes_from(cfg: Config, collection: Any) -> Config:
    """A new run takes its feature sizes from the collection (a preset's are those of its release); one
    warning line says so when they differ."""
    changed = [(key, getattr(cfg.data, key), getattr(collection, key)) for key in ("visual_dim", "text_dim")
               if getattr(cfg.data, key) != getattr(collection, key)]
    for key, _, have in changed:
        cfg = cfg.override(f"data.{key}={have}")
    if changed:
        warnings.warn(f"collection {cfg.data.collection!r} has features of other sizes than configured: "
                      + ", ".join(f"data.{key}={have} (not {want})" for key, want, have in changed)
                      + "; using the collection's", UserWarning, stacklevel=3)
    return cfg


class Trainer:
    """One run: builds data, model, optimizer; trains epoch by epoch; checkpoints; resumes."""

    def __init__(self, cfg: Config, run_dir: PathLike, progress: bool = True,
                 callbacks: Optional[Iterable[Callback]] = None, checkpoint_every: int = 0,
                 infer_sizes: bool = True, bars: Optional[bool] = None):

        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        # bars only where they render; ``bars=False`` keeps the per-epoch lines and the test table (a cluster log)
        self.bars = progress and use_bars() and bars is not False
        self.step_log: Optional[StepLog] = None  # per-step losses and lr (train() opens it for rank 0)
        self.last_parts: dict[str, Tensor] = {}
        self.callbacks = list(callbacks or [])
        self.checkpoint_every = max(0, int(checkpoint_every))

        self.world = current_world()
        self.device = rank_device(resolve_device(cfg.train.device), self.world)
        self.amp = resolve_amp(cfg.train.amp, self.device, cfg.model.hidden_size)  # auto: ralbook.runtime.precision
        self.num_workers = workers_for(cfg.data.num_workers)  # -1: from the machine (ralbook.runtime.workers)
        autocast(self.device, self.amp)  # validates the amp setting before anything runs
        require_data_root(cfg)
        self.collection = Collection.from_config(cfg.data)
        if infer_sizes:
            self.cfg = cfg = feature_sizes_from(cfg, self.collection)
        check_dims(cfg, self.collection)
        if cfg.train.n_epoch < 1 or cfg.train.batch_size < 1:
            raise RalbookError(f"train.n_epoch and train.batch_size must be >= 1, got {cfg.train.n_epoch} and "
                               f"{cfg.train.batch_size}")
        self.splits = plan_splits(self.collection, cfg)
        if not self.splits.train_videos:
            raise DataError(f"collection {cfg.data.collection!r} has no training videos")
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.forward_model = torch.compile(self.model) if cfg.train.compile else self.model
        if self.world.distributed:
            check_batches(len(self.splits.train_videos), cfg.train.batch_size, self.world)
            self.forward_model = wrap_for_training(self.model, self.device)
        self.objective = Objective(cfg.loss)
        self.steps_per_epoch = math.ceil(len(self.splits.train_videos) / cfg.train.batch_size)
        self.optimizer = build_optimizer(self.model, cfg.train.lr, cfg.train.warmup, cfg.train.weight_decay,
                                         self.steps_per_epoch * cfg.train.n_epoch, cfg.train.grad_clip)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None
        self.state = TrainState()
        self.part_names: list[str] = []
        self.sums: Optional[Tensor] = None  # (1 + parts,) loss sums of the current epoch, on device

    # --- checkpoints (their contents: ralbook.training.checkpointing) ---

    def save_last(self) -> None:
        if self.world.is_main:  # only rank 0 writes the run directory
            save_last(self.run_dir, cfg=self.cfg, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                      state=self.state, part_names=self.part_names, sums=self.sums,
                      train_videos=len(self.splits.train_videos))

    def save_best(self, epoch: int, val: dict[str, dict[str, float]]) -> None:
        if self.world.is_main:
            save_best(self.run_dir, self.cfg, self.model, epoch, val)

    def restore(self, path: Path) -> None:
        """Continue exactly where ``path`` (a last.pt) left off; CheckpointError naming the file when it cannot."""
        resumed = restore_last(path, self.run_dir, self.cfg, self.model, self.optimizer, self.scaler,
                               len(self.splits.train_videos), self.device)
        self.state, self.part_names, self.sums = resumed.state, resumed.part_names, resumed.sums

    # --- events ---

    def _emit(self, event: str, **info: Any) -> None:
        for callback in self.callbacks:
            callback(event, info)

    # --- one step / one epoch ---

    def _accumulate(self, total: Tensor, parts: dict[str, Tensor]) -> None:
        if not self.part_names:
            self.part_names = list(parts)
        values = torch.stack([total.detach().float()] + [parts[n].detach().float() for n in self.part_names])
        self.sums = values if self.sums is None else self.sums + values

    def _non_finite(self, where: str, tensors: dict[str, Tensor]) -> None:
        """Stop with one message before a NaN or inf reaches a library (the OT step's assignment) or
        the next step. One fused norm over all ``tensors`` (a norm is finite exactly when every value is,
        short of values near 1e19) and one device sync: a per-tensor check cost ~10% of a CPU step."""
        values = [t.detach() for t in tensors.values()]
        flags = torch.isfinite(torch.stack(torch._foreach_norm(values))).tolist()
        if all(flags):
            return
        bad = [name for name, ok in zip(tensors, flags) if not ok]
        raise NonFiniteError(f"the training loss became non-finite in epoch {self.state.epoch} at step "
                             f"{self.state.step_in_epoch + 1} ({where}: {shorten(', '.join(bad))}); lower train.lr, "
                             "turn off train.amp, or look for extreme feature values (ralbook inspect)")

    def _check_inputs(self, batch: dict[str, Any]) -> None:
        """Non-finite input features are a data problem: name the videos and captions."""
        feats = [batch["clip_feats"], batch["frame_feats"], batch["query_feats"]]
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(feats))).all()):
            return  # the usual case: one fused pass; a norm that overflows on finite rows falls through
        rows = {"video_ids": torch.isfinite(batch["clip_feats"]).flatten(1).all(1)
                & torch.isfinite(batch["frame_feats"]).flatten(1).all(1),
                "cap_ids": torch.isfinite(batch["query_feats"]).flatten(1).all(1)}
        if all(bool(ok.all()) for ok in rows.values()):
            return
        named = {key: [batch[key][i] for i in torch.nonzero(~ok).squeeze(1).tolist()] for key, ok in rows.items()}
        raise NonFiniteError(f"collection {self.cfg.data.collection!r} gives non-finite (NaN or inf) features for "
                             f"{len(named['video_ids'])} video(s) {shorten(named['video_ids'][:3])} and "
                             f"{len(named['cap_ids'])} caption(s) {shorten(named['cap_ids'][:3])} of training batch "
                             f"{self.state.step_in_epoch + 1} in epoch {self.state.epoch}; check them with "
                             "ralbook inspect")

    def train_step(self, batch: dict[str, Any], hard_negatives: bool) -> Tensor:
        recheck_threads_now_and_then()  # other work may have started or ended (automatic count only)
        batch = to_device(batch, self.device)
        self._check_inputs(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            out = self._forward(batch)
        out = _float_output(out)
        self._non_finite("model outputs", {f.name: getattr(out, f.name) for f in dataclasses.fields(out)
                                           if torch.is_tensor(getattr(out, f.name))
                                           and getattr(out, f.name).is_floating_point()})
        total, parts = self.objective(out, hard_negatives=hard_negatives)  # labels: out.labels
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        self._non_finite("weights after the step", {"loss": total.detach(), **dict(self.model.named_parameters())})
        self._accumulate(total, parts)
        self.last_parts = parts
        return total

    def _forward(self, batch: dict[str, Any]) -> Any:
        """The model output of one batch; in a distributed run, of the global batch (see ralbook.distributed)."""
        if not self.world.distributed:
            return self.forward_model(batch)

        return self.forward_model(batch, dropout_seed(self.cfg.train.seed, self.state.global_step, self.world.rank))

    def _loader(self, batches: list[list[int]]) -> Any:
        from torch.utils.data import DataLoader


        return DataLoader(TrainDataset(self.collection, self.splits.train_videos), batch_sampler=batches,
                          num_workers=self.num_workers, collate_fn=collate_train,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.train.seed))

    def train_epoch(self, epoch: int) -> None:
        from tqdm.auto import tqdm

        batches = epoch_batches(len(self.splits.train_videos), self.cfg.train.batch_size, self.cfg.train.seed, epoch)
        start = self.state.step_in_epoch
        hard = epoch >= self.cfg.train.hard_negative_start_epoch
        self.model.train()
        bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch}", leave=False, unit="batch",
                   disable=not self.bars)
        if self.world.distributed:  # this rank reads its share of every global batch

            batches = [b[share(len(b), self.world)] for b in batches]
        for index, batch in enumerate(self._loader(batches[start:]), start=start + 1):
            total = self.train_step(batch, hard)
            self.state.step_in_epoch = index
            self.state.global_step += 1
            if self.step_log is not None:
                self.step_log.write(self.state.global_step, epoch, index, self.optimizer.current_lr(), total.item(),
                                    {k: float(v.detach()) for k, v in self.last_parts.items()})
            bar.update(1)
            if index % 10 == 0 or index == len(batches):
                bar.set_postfix(loss=f"{total.item():.4f}")
            if self.checkpoint_every and self.state.global_step % self.checkpoint_every == 0 \
                    and index < len(batches):
                self.save_last()
            self._emit("step", epoch=epoch, step_in_epoch=index, global_step=self.state.global_step)
        bar.close()

    def epoch_losses(self) -> dict[str, float]:
        if self.sums is None or self.state.step_in_epoch == 0:
            return {}
        means = (self.sums.double() / self.state.step_in_epoch).cpu().tolist()
        out = dict(zip(["total"] + self.part_names, means))
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        if bad:
            raise RalbookError(f"the training loss became non-finite in epoch {self.state.epoch} ({', '.join(bad)}); "
                               "lower train.lr or turn off train.amp")
        return out

    def _evaluate(self) -> Callable[..., EvalResult]:

        return evaluate_shared if self.world.distributed else evaluate

    def validate(self) -> EvalResult:
        s = self.splits
        return self._evaluate()(self.model, self.collection, s.val_name, self.cfg, self.device,
                                video_ids=s.val_videos, cap_ids=s.val_captions, progress=self.bars,
                                source=f"the model in training (epoch {self.state.epoch})")

    def finish_epoch(self, epoch: int, started: float) -> dict[str, Any]:
        """Validate, update early stopping and best.pt, append the epoch record, save last.pt."""
        losses = self.epoch_losses()
        val = self.validate().metrics
        sumr = val["fused"]["SumR"]
        improved = sumr > self.state.best_sumr
        if improved:
            self.state.best_sumr, self.state.best_epoch, self.state.best_val = sumr, epoch, val
            self.state.bad_epochs = 0
            self.save_best(epoch, val)
        else:
            self.state.bad_epochs += 1
        elapsed = time.perf_counter() - started
        self.state.elapsed_s += elapsed
        record = {"epoch": epoch, "global_step": self.state.global_step, "lr": self.optimizer.current_lr(),
                  "hard_negatives": epoch >= self.cfg.train.hard_negative_start_epoch, "loss": losses, "val": val,
                  "improved": improved, "best_epoch": self.state.best_epoch, "bad_epochs": self.state.bad_epochs,
                  "time_s": round(elapsed, 3)}
        if self.world.is_main:
            record_epoch(self.run_dir, record)
        # the state now points at the next epoch
        self.state.epoch, self.state.step_in_epoch, self.sums = epoch + 1, 0, None
        if self.state.bad_epochs > self.cfg.train.patience:
            self.state.stopped_early = True
        if self.state.stopped_early or self.state.epoch >= self.cfg.train.n_epoch:
            self.state.finished = True
        self.save_last()
        return record

    def _summary(self, record: dict[str, Any]) -> str:
        v = record["val"]["fused"]
        best = " *" if record["improved"] else ""
        loss = record["loss"].get("total", float("nan"))
        return (f"epoch {record['epoch']:>3}/{self.cfg.train.n_epoch}  loss {loss:.4f}"
                f"  lr {record['lr']:.2e}  val R@1 {v['R@1']:.1f} R@5 {v['R@5']:.1f} R@10 {v['R@10']:.1f} "
                f"R@100 {v['R@100']:.1f} SumR {v['SumR']:.1f}{best}  (best {self.state.best_sumr:.1f} @ "
                f"{self.state.best_epoch})  {record['time_s']:.1f}s")

    # --- the whole run ---

    def fit(self) -> int:
        """Train until finished (epochs or early stop); returns the number of epochs run by this call."""
        from tqdm.auto import tqdm

        first = self.state.epoch
        bar = tqdm(total=self.cfg.train.n_epoch, initial=self.state.epoch, desc="training", unit="epoch",
                   disable=not self.bars)
        with deterministic_kernels(self.cfg.train.deterministic):
            while not self.state.finished:
                epoch, started = self.state.epoch, time.perf_counter()
                self.train_epoch(epoch)
                record = self.finish_epoch(epoch, started)
                bar.update(1)
                if self.progress:
                    tqdm.write(self._summary(record))
                self._emit("epoch", epoch=epoch, record=record)
                recheck_threads(tqdm.write if self.progress else None)  # other work may have started or ended
        bar.close()
        if self.progress and self.state.stopped_early:
            tqdm.write(f"early stop: no improvement for {self.state.bad_epochs} epochs")
        return self.state.epoch - first

    def test(self) -> dict[str, Any]:
        """Evaluate best.pt on the test split and write test_metrics.json."""

        barrier()  # rank 0 has written best.pt
        best_epoch = load_best(self.model, self.run_dir)
        result = self._evaluate()(self.model, self.collection, "test", self.cfg, self.device, progress=self.bars,
                                  source=f"checkpoint {self.run_dir / BEST_FILE}")
        out = test_record(result, best_epoch)
        if self.world.is_main:
            write_json(self.run_dir / TEST_FILE, out, indent=1)
        if self.progress:
            print(format_metrics(result, title=f"test ({len(result.cap_ids)} queries x {len(result.video_ids)} "
                                               f"videos), best epoch {best_epoch}"))
        return out


def train(cfg: Config, run_dir: PathLike, resume: bool = False, progress: bool = True,
          callbacks: Optional[Iterable[Callback]] = None, checkpoint_every: int = 0,
          threads: Requested = None, command: Optional[str] = None, overrides: Sequence[str] = (),
          bars: Optional[bool] = None) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume=True``); evaluate best.pt on test.

    ``callbacks``: functions ``f(event, info)`` called after every step (``"step"``) and epoch
    (``"epoch"``, after the checkpoint is written); an exception raised there stops the run as a
    kill would. ``checkpoint_every``: also write last.pt every that many steps (0: at epoch ends).
    ``threads``: CPU threads (None/0: chosen from the machine's load, see ralbook.runtime).
    ``command``/``overrides``: the command line and its ``--set`` assignments, recorded with the machine,
    the git commit and the start and end time in config.json's ``environment`` (ralbook.runtime.provenance).
    ``bars=False``: no progress bars, but the per-epoch lines and the test table stay (``progress``).
    Per-step losses and lr go to RUN_DIR/steps.csv (and TensorBoard when installed).
    """

    started = now()
    world = current_world()
    configure_threads(threads, announce=machine_note if progress and world.is_main else None)
    run_dir = Path(run_dir)
    cfg.sync()
    cfg.check()
    requested_amp = cfg.train.amp
    cfg = _settle_amp(cfg, rank_device(resolve_device(cfg.train.device), world), progress and world.is_main,
                      _recorded_amp(run_dir) if resume else None)
    if world.distributed:  # every rank decided alone: machines of different kinds may disagree
        chosen = gather_objects(cfg.train.amp)
        if len(set(chosen)) > 1:
            raise RalbookError(f"the ranks chose different precisions for train.amp=auto (by rank: {chosen}); "
                               "set train.amp=bf16 or train.amp=none for all of them")
    can_resume = _prepare_run_dir(cfg, run_dir, resume)
    # checks data and settings first (a new run takes its feature sizes from the collection); only rank 0
    # prints and writes
    trainer = Trainer(cfg, run_dir, progress and world.is_main, callbacks, checkpoint_every,
                      infer_sizes=not resume, bars=bars)
    if world.distributed and world.is_main:
        print(describe(world, cfg.train.batch_size), flush=True)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record = _environment(trainer, requested_amp, command, overrides, started)
        run_config = {**_run_config(trainer.cfg, world, resume, run_dir), ENVIRONMENT_KEY: record}
        write_json(run_dir / CONFIG_FILE, run_config, indent=1)
    if can_resume:
        trainer.restore(run_dir / LAST_FILE)
        if progress and world.is_main:
            print(resume_position(trainer), flush=True)
    elif resume and progress:
        print(f"{run_dir}: no checkpoint written yet; starting from the beginning")
    if world.is_main:
        trainer.step_log = StepLog(run_dir, trainer.state.global_step if can_resume else None)
    try:
        epochs_run = trainer.fit()
    finally:
        if trainer.step_log is not None:
            trainer.step_log.close()
    test_file = run_dir / TEST_FILE
    if epochs_run == 0 and test_file.is_file():  # resuming a run that had already finished
        test = json.loads(test_file.read_text())
    else:
        test = trainer.test()
    if world.is_main:  # the end time: a run's record says how long it took, an interrupted one has none
        write_json(run_dir / CONFIG_FILE, {**run_config, ENVIRONMENT_KEY: finish_record(record)}, indent=1)
    s = trainer.state
    return RunResult(run_dir, s.best_epoch, s.best_val, test["metrics"], s.epoch, s.stopped_early)


def resume_position(trainer: "Trainer") -> str:
    """Where a resumed run continues, in words."""
    s, n_epochs = trainer.state, trainer.cfg.train.n_epoch
    if s.finished:
        return f"resuming {trainer.run_dir}: the run had finished ({s.epoch} epochs); only the test remains"
    where = (f"epoch {s.epoch}/{n_epochs} (counting from 0), after step {s.step_in_epoch} of "
             f"{trainer.steps_per_epoch}" if s.step_in_epoch else
             f"the start of epoch {s.epoch}/{n_epochs} (counting from 0; {s.epoch} completed)")
    return f"resuming {trainer.run_dir} at {where} (global step {s.global_step})"


def _environment(trainer: "Trainer", requested_amp: str, command: Optional[str] = None,
                 overrides: Sequence[str] = (), started: Optional[str] = None) -> dict[str, Any]:
    """config.json's record of the machine and the command of this (re)start; with the bf16 measurement when
    train.amp=auto was decided by one (ralbook.runtime.amp_probe)."""
    probe = None
    if requested_amp == "auto" and trainer.device.type == "cpu" and not _host_lacks_bf16() \
            and os.environ.get(OVERRIDE_VARIABLE, "").strip() not in ("0", "1"):
        probe = cpu_probe(trainer.cfg.model.hidden_size)
        probe = {k: probe[k] for k in ("ratio", "fp32_s", "bf16_s", "shape", "rule", "cached") if k in probe}
    return run_record(trainer.amp, str(trainer.device), trainer.num_workers, probe, command=command,
                      overrides=overrides, started=started)


def _settle_amp(cfg: Config, device: torch.device, announce: bool, recorded: Optional[str] = None) -> Config:
    """``cfg`` with ``train.amp=auto`` replaced by what it means on ``device`` (bf16 or none), so that
    config.json records the precision the run trains in; a resumed run (``recorded``: its config.json's
    value) keeps its precision, also on a machine where auto would choose the other one."""

    if cfg.train.amp != "auto":
        chosen, line = cfg, describe_amp(cfg.train.amp, device, hidden=cfg.model.hidden_size)
    elif recorded in ("none", "bf16", "fp16"):
        chosen = cfg.override(f"train.amp={recorded}")
        line = f"{describe_amp(recorded, device, hidden=cfg.model.hidden_size)}, kept from the run being resumed (train.amp=auto)"
    else:
        hidden = cfg.model.hidden_size
        chosen = cfg.override(f"train.amp={resolve_amp('auto', device, hidden)}")
        line = describe_amp("auto", device, hidden=hidden)
    if announce:
        machine_note(line)
    return chosen


# ----------------------------------------------------------------------------- command line
