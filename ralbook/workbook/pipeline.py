"""The main job (``python -m ralbook demo``) and the plumbing the notebooks share.

* Paths: every relative path a notebook parameter names (``data``, ``runs/demo``, ``figures``)
  is taken relative to the repository root (:func:`repo_root`), so a notebook gives the same
  result whether Jupyter starts it in ``notebooks/`` or papermill starts it in the repository.
* :func:`run_notebook` executes one notebook headlessly with papermill, kernel ``python3``, with
  the notebook's own folder as working directory (what JupyterLab does).
* :func:`ensure_run` checks the run directory notebooks 03-05 are given (a missing one is an error
  naming the path); with ``train_if_missing=True`` they run alone: they train a tiny run through
  :func:`ralbook.train.train` there, saying so.
* :func:`run_demo` trains the demo model with the demo preset, then executes every notebook in
  order into ``OUT/notebooks/`` with figures in ``OUT/figures/``, writes ``OUT/results.json``
  (:mod:`ralbook.report`) and prints where everything is. It writes nothing outside ``OUT``: the
  committed ``figures/`` folder changes only through ``python -m ralbook figures``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ralbook.config import Overrides, build_config, override_strings
from ralbook.data.demo import load_ground_truth
from ralbook.errors import DataError, RalbookError
from ralbook.files import json_ready, repo_root, resolve_path
from ralbook.retrieval.evaluate import evaluate
from ralbook.runtime.machine_log import ENV_MACHINE_LOG
from ralbook.training.rundir import open_checkpoint, open_run, read_metrics
from ralbook.training.trainer import train
from ralbook.workbook.results import RESULTS_FILE, collect_results, headline, write_results


# What notebooks reach as ``pipeline.X``: the helpers of this module and these, re-exported from below.
REEXPORTED = (build_config, override_strings, open_run, open_checkpoint, repo_root, resolve_path, json_ready)

# The numbered notebooks, in order. The main job runs all but the sweep, which trains sixteen more models
# (``--ablation`` adds it), and the robustness study, which trains dozens (``--robustness`` adds it).
NOTEBOOKS: tuple[str, ...] = (
    "00_quickstart.ipynb",
    "01_data_inspection.ipynb",
    "02_train.ipynb",
    "03_evaluate.ipynb",
    "04_uncertainty.ipynb",
    "05_word_confidence.ipynb",
    "06_ablation_sweep.ipynb",
    "07_robustness.ipynb",
    "08_uncertainty_methods.ipynb",
)
SWEEP_NOTEBOOK = "06_ablation_sweep.ipynb"
ROBUSTNESS_NOTEBOOK = "07_robustness.ipynb"
UNCERTAINTY_NOTEBOOK = "08_uncertainty_methods.ipynb"  # trains two more demo runs (the ensemble): opt-in, cached
KERNEL_NAME = "python3"
# The demo job's run folder inside OUT; its name tags the figures (``03_evaluate_ral_demo_recall.png``).
DEMO_RUN_NAME = "ral_demo"
# Set in the environment of notebook kernels started by run_notebook (see :func:`headless`).
HEADLESS_ENV = "RALBOOK_HEADLESS"
# The kernel's own log stays quiet: its start-up warning "Kernel is running over TCP without encryption" (papermill
# and the kernel talk over this machine's loopback) repeated for every notebook, and jupyter_client interrupts
# (SIGINT) every kernel it shuts down, which a kernel still finishing a message logs as the error "KeyboardInterrupt
# caught in kernel" after the notebook has completed. Errors in cells still fail the notebook (PapermillExecutionError).
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]
# Files a finished run directory holds (written by ralbook.train); the first is enough to load a model.
RUN_MARKERS: tuple[str, ...] = ("best.pt", "last.pt")


# ----------------------------------------------------------------------------- paths


# ----------------------------------------------------------------------------- notebooks


def run_notebook(path: str | os.PathLike, out_path: str | os.PathLike, parameters: Optional[Mapping[str, Any]] = None,
                 cwd: Optional[str | os.PathLike] = None, timeout: Optional[int] = None,
                 log_output: bool = False) -> Path:
    """Execute a notebook with papermill (kernel ``python3``) and write the executed copy to ``out_path``.

    ``cwd`` defaults to the notebook's folder. A failing cell raises ``RalbookError`` naming the
    notebook, the executed copy (which holds the traceback) and the error.
    """
    import papermill as pm

    src = Path(path).resolve()
    if not src.is_file():
        raise RalbookError(f"notebook {src} does not exist")
    out = Path(out_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {key: os.environ.get(key) for key in (HEADLESS_ENV, "TQDM_DISABLE", ENV_MACHINE_LOG)}
    # the kernel inherits them: no widget bars, and lines about this machine go to a log beside the copy
    os.environ.update({HEADLESS_ENV: "1", "TQDM_DISABLE": "1", ENV_MACHINE_LOG: str(machine_log_of(out))})
    try:
        pm.execute_notebook(str(src), str(out), parameters=dict(parameters or {}), kernel_name=KERNEL_NAME,
                            cwd=str(Path(cwd).resolve() if cwd else src.parent), progress_bar=False,
                            log_output=log_output, execution_timeout=timeout, extra_arguments=KERNEL_ARGUMENTS)
    except pm.PapermillExecutionError as err:
        raise RalbookError(f"notebook {src.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                           f"(executed copy with the traceback: {out})") from err
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if out.is_file():
            portable_metadata(out)
    return out


def machine_log_of(executed: str | os.PathLike) -> Path:
    """Where the machine lines of an executed notebook go: ``NAME.machine.log`` beside its executed copy."""
    p = Path(executed)
    return p.with_name(p.stem + ".machine.log")


def shown_path(path: str | os.PathLike) -> str:
    """A path as a saved notebook may show it: relative to the repository root when inside it (the form
    notebook parameters take, see :func:`resolve_path`), else unchanged."""
    p = Path(path)
    try:
        return Path(os.path.relpath(p.resolve(), repo_root())).as_posix() if p.resolve().is_relative_to(
            repo_root()) else str(path)
    except (OSError, ValueError):
        return str(path)


def portable_metadata(executed: str | os.PathLike) -> None:
    """Rewrite papermill's record of the input and output paths (absolute) with :func:`shown_path`."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    record = nb.metadata.get("papermill", {})
    changed = False
    for key in ("input_path", "output_path"):
        if record.get(key) and record[key] != shown_path(record[key]):
            record[key] = shown_path(record[key])
            changed = True
    if changed:
        nbformat.write(nb, executed)


def reload_sentence(run_dir: str | os.PathLike) -> str:
    """One sentence for a notebook that reloads a finished run instead of training (shown in place of an
    empty training cell): which run, how many epochs it trained, its best epoch."""
    path = resolve_path(run_dir)
    epochs = [int(m["epoch"]) for m in read_metrics(path) if "epoch" in m]
    done = f" ({max(epochs)} epochs trained earlier)" if epochs else ""
    return (f"Nothing to train: the run `{shown_path(path)}` is finished{done}, so this notebook reloads its "
            "checkpoint and recorded curves.")


def headless() -> bool:
    """True inside a notebook executed by :func:`run_notebook` (papermill): progress bars there would be
    saved as a frozen "0%" widget, so notebooks pass ``progress=pipeline.progress()`` instead."""
    return os.environ.get(HEADLESS_ENV) == "1"


def progress() -> bool:
    """Whether a notebook should draw progress bars: yes interactively, no when executed headlessly."""
    return not headless()


def strip_notebook(path: str | os.PathLike) -> bool:
    """Remove outputs and execution counts (how notebooks are stored in git); True if the file changed."""
    import nbformat

    p = Path(path)
    nb = nbformat.read(p, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    for key in ("papermill", "widgets"):
        if key in nb.metadata:
            del nb.metadata[key]
            changed = True
    if changed:
        nbformat.write(nb, p)
    return changed


def write_summary(path: str | os.PathLike, data: Mapping[str, Any]) -> Optional[Path]:
    """Write a notebook's key numbers as JSON (read by tests and by the main job); '' writes nothing."""
    if not str(path):
        return None
    out = resolve_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_ready(data), indent=1) + "\n", encoding="utf-8")
    return out


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- runs


def has_model(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a checkpoint that :func:`ralbook.train.load_run` can read."""
    p = Path(run_dir)
    return any((p / name).is_file() for name in RUN_MARKERS)


def ensure_run(run_dir: str | os.PathLike, preset_name: str = "demo", data_root: str = "", epochs: int = 2,
               hidden_size: int = 0, seed: Optional[int] = None, device: str = "auto",
               overrides: Overrides = (), progress: bool = True, train_if_missing: bool = False) -> Path:
    """Return ``run_dir`` (resolved) when it holds a trained model.

    Otherwise RalbookError naming the path (a typo must not silently train a new model), unless
    ``train_if_missing=True``: then a small run is trained there first, which makes notebooks 03-05
    runnable on their own from a fresh kernel; the message says plainly that the numbers then come
    from a tiny run, not from notebook 02's.
    """
    path = resolve_path(run_dir)
    if has_model(path):
        return path
    if not train_if_missing:
        what = "does not exist" if not path.exists() else "holds no trained model (best.pt)"
        raise RalbookError(f"run directory {path} {what}: pass the run_dir of 02_train (or of `ralbook train "
                           "--out DIR`), or set train_if_missing=True to train a small run there now")

    cfg = build_config(preset_name, data_root=data_root, epochs=epochs, seed=seed, device=device,
                       hidden_size=hidden_size, overrides=overrides)
    print(f"NOTE: no trained model in {path}; training a small {preset_name!r} run there now "
          f"({cfg.train.n_epoch} epochs, hidden size {cfg.model.hidden_size}). For real numbers, run "
          f"02_train.ipynb first and pass its run_dir.", flush=True)
    train(cfg, path, resume=False, progress=progress)
    return path


def run_name(run_dir: str | os.PathLike) -> str:
    """A short tag for figure names: the run folder's name."""
    return Path(run_dir).name or "run"


def ground_truth(data_root: str | os.PathLike, collection: str) -> Any:
    """The generator's ground truth of a collection (:class:`ralbook.demo.GroundTruth`), or None.

    Real releases record none; a generated collection has ``GroundTruth/`` next to ``TextData/``.
    """

    root = resolve_path(data_root or "data")
    if not (root / collection / "GroundTruth").is_dir():
        return None
    try:
        return load_ground_truth(root, collection)
    except DataError as err:
        print(f"ground truth present but unreadable; the analyses that need it are skipped: {err}")
        return None


def captions_by_video(collection: Any, split: str) -> dict[str, list[str]]:
    """Video id -> caption texts of one split, in file order."""
    out: dict[str, list[str]] = {}
    for cap_id, text in collection.captions(split):
        out.setdefault(collection.video_of(cap_id), []).append(text)
    return out


def caption_words(collection: Any, cap_ids: Sequence[str]) -> dict[str, list[str]]:
    """Caption id -> one label per token row the model sees (at most ``max_desc_len``).

    Uses the collection's word file when it has one (the demo data); otherwise (real releases,
    whose token rows are sub-word pieces) placeholders ``#0, #1, ...``.
    """
    limit = collection.max_desc_len
    out: dict[str, list[str]] = {}
    for cap in cap_ids:
        ws = collection.words(cap)
        if ws is None:
            ws = [f"#{i}" for i in range(collection.n_tokens(cap))]
        out[cap] = list(ws)[:limit]
    return out


def evaluate_runs(run_dirs: Iterable[str | os.PathLike], split: str = "test", device: str = "auto",
                  data_root: str = "", known: Optional[Mapping[str, Any]] = None) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics (score kind -> R@K) of several runs on one split, keyed by run folder name.

    ``known`` entries (name -> metrics, e.g. the run a notebook just evaluated) come first; a run
    whose folder name is taken is keyed by its full path; runs without a model are skipped with a note.
    """

    out: dict[str, dict[str, dict[str, float]]] = dict(known or {})
    for run in run_dirs:
        path = resolve_path(run)
        if not has_model(path):
            print(f"skipping {path}: no trained model there")
            continue
        cfg, model, coll = open_run(path, device, data_root)
        name = run_name(path) if run_name(path) not in out else str(path)
        out[name] = evaluate(model, coll, split, cfg, progress=False).metrics
    return out


# ----------------------------------------------------------------------------- the main job


def _selected(names: Optional[Sequence[str]], available: Sequence[str]) -> list[str]:
    if not names:
        return list(available)
    chosen = [nb for nb in available if any(nb.startswith(n) or nb == n for n in names)]
    if not chosen:
        raise RalbookError(f"no notebook matches {list(names)}; available: {list(available)}")
    return chosen


def demo_parameters(name: str, out: Path, run_dir: Path, data_root: Path, figures: Path, device: str,
                    epochs: int, ablation_epochs: int = 3) -> dict[str, Any]:
    """Papermill parameters of each notebook in the main job: paths relative to the repository root when
    inside it (notebooks resolve them from there; a saved notebook shows no machine path), else absolute."""
    summary = shown_path(out / "notebooks" / name.replace(".ipynb", "_summary.json"))
    common = {"figures_dir": shown_path(figures), "summary_path": summary}
    per_run = {"run_dir": shown_path(run_dir), "device": device, "data_root": shown_path(data_root)}
    if name.startswith("00"):
        return {**common, **per_run}  # reuses the demo run
    if name.startswith("01"):
        return {**common, "data_root": shown_path(data_root)}
    if name.startswith("02"):
        return {**common, **per_run, "preset": "demo", "epochs": epochs, "resume": True}
    if name.startswith("07"):
        return {**common, "device": device, "cache_dir": shown_path(out / "robustness")}
    if name.startswith("08"):  # the ensemble runs and the benchmark's cache live in OUT/uncertainty
        return {**common, **per_run, "ensemble_dir": shown_path(out / "uncertainty"),
                "cache_dir": shown_path(out / "uncertainty"), "ensemble_epochs": epochs}
    if name.startswith("06"):
        return {**common, "data_root": shown_path(data_root), "device": device, "sweep_dir": shown_path(out / "ablation"),
                "epochs": ablation_epochs}
    return {**common, **per_run}


def run_demo(args: argparse.Namespace) -> int:
    """Train the demo model, execute the notebooks in order, print where the results are."""

    start = time.perf_counter()
    root = repo_root()
    out = resolve_path(args.out, root)
    data_root = resolve_path(args.data_root, root)
    figures = resolve_path(args.figures, root) if args.figures else out / "figures"
    run_dir = out / DEMO_RUN_NAME
    nb_dir = root / "notebooks"
    available = [n for n in NOTEBOOKS if (nb_dir / n).is_file()]
    opt_in = {SWEEP_NOTEBOOK: getattr(args, "ablation", False), ROBUSTNESS_NOTEBOOK: getattr(args, "robustness", False),
              UNCERTAINTY_NOTEBOOK: getattr(args, "uncertainty", False)}
    default = [n for n in available if opt_in.get(n, True)]
    names = _selected(args.notebooks, available) if args.notebooks else default
    if not (data_root / "demo").is_dir():
        raise RalbookError(f"demo data not found in {data_root}/demo (regenerate it: python -m ralbook make-demo)")

    if args.retrain and run_dir.exists():
        print(f"--retrain: removing the previous run {run_dir}", flush=True)
        shutil.rmtree(run_dir)
    cfg = build_config("demo", data_root=str(data_root), epochs=args.epochs, device=args.device)
    resume = (run_dir / "config.json").is_file()
    print(f"[1/2] {'checking / resuming' if resume else 'training'} the demo model ({cfg.train.n_epoch} epochs) "
          f"in {run_dir}", flush=True)
    try:
        train(cfg, run_dir, resume=resume, progress=True)
    except RalbookError as err:
        raise RalbookError(f"{err} (python -m ralbook demo --retrain starts the demo run afresh)") from err
    print(f"      training done after {time.perf_counter() - start:.0f} s", flush=True)

    executed = []
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        print(f"[2/2] notebook {i}/{len(names)}: {name}", flush=True)
        params = demo_parameters(name, out, run_dir, data_root, figures, args.device, args.epochs,
                                 getattr(args, "ablation_epochs", 3))
        executed.append(run_notebook(nb_dir / name, out / "notebooks" / name, params))
        print(f"      {name} done in {time.perf_counter() - t0:.0f} s", flush=True)

    results = collect_results(out / "notebooks", json.loads((run_dir / "config.json").read_text()))
    write_results(out / RESULTS_FILE, results)
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")
    print(f"  executed notebooks: {out / 'notebooks'}")
    print(f"  run directory:      {run_dir}")
    print(f"  figures:            {figures}")
    print(f"  results:            {out / RESULTS_FILE}")
    for what, value in headline(results):
        print(f"  {what}: {value}")
    return 0

