"""Training the variants of a sweep by running the training notebook once per variant."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from ralbook.workbook import pipeline


def train_variants(train_notebook: str | os.PathLike, sweep: Path, variants: Mapping[str, Mapping[str, Any]],
                   **parameters: Any) -> None:
    """Execute the training notebook once per variant into ``sweep / name``; a variant already trained is reused.

    ``parameters`` are the notebook's shared parameters; a variant's settings go in as its ``overrides``.
    """

    for name, extra in variants.items():
        run = sweep / name
        if pipeline.has_model(run):  # delete a variant's directory to train it again
            print(f"{name}: reusing {run}")
            continue
        started = time.perf_counter()
        pipeline.run_notebook(train_notebook, run / "02_train_executed.ipynb", {
            **parameters, "run_dir": str(run), "overrides": dict(extra), "progress": False,
            "summary_path": str(run / "02_train_summary.json")})
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s")
