"""Per-step losses and learning rate: ``steps.csv`` in the run folder, and TensorBoard when it is installed.

Why: metrics.jsonl holds one line per epoch; a loss spike or a warm-up problem shows only per step. The CSV
needs nothing beyond the standard library; TensorBoard (``tensorboard`` package) is optional.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

STEPS_FILE = "steps.csv"
FIXED_COLUMNS = ("global_step", "epoch", "step_in_epoch", "lr", "loss")


def _tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter on RUN_DIR/tensorboard, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's wrapper needs the tensorboard package
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


class StepLog:
    """Appends one row per training step; on resume, rows after the restored step are dropped (they are
    trained again), so the file always describes the run's one history."""

    def __init__(self, run_dir: Path, resume_step: Optional[int] = None, tensorboard: bool = True):
        self.path = Path(run_dir) / STEPS_FILE
        self.columns: Optional[list[str]] = None
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows:
                self.columns = rows[0]
                kept = [r for r in rows[1:] if r and int(r[0]) <= resume_step]
                with open(self.path, "w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerows([rows[0], *kept])
        elif self.path.exists():
            self.path.unlink()
        self.writer = _tensorboard_writer(Path(run_dir)) if tensorboard else None

    def write(self, global_step: int, epoch: int, step_in_epoch: int, lr: float, loss: float,
              parts: dict[str, float]) -> None:
        if self.columns is None:
            self.columns = [*FIXED_COLUMNS, *parts]
            with open(self.path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(self.columns)
        values = {"global_step": global_step, "epoch": epoch, "step_in_epoch": step_in_epoch, "lr": lr,
                  "loss": loss, **parts}
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([repr(values[c]) if isinstance(values.get(c), float) else values.get(c, "")
                                    for c in self.columns])
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)
            for name, value in parts.items():
                self.writer.add_scalar(f"train/{name}", value, global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
