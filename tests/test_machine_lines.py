"""Saved notebooks carry nothing of the machine that ran them (issue #25): no repository path, no
``threads:`` line, no precision measurement; those lines go to a log file beside the executed copy."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from ralbook.runtime import machine_log
from ralbook.workbook import pipeline

REPO = Path(__file__).resolve().parent.parent


def _all_text(path: Path) -> str:
    """Everything a saved notebook holds: sources, outputs and metadata, as stored."""
    return Path(path).read_text(encoding="utf-8")


def test_machine_note_prints_or_appends_to_the_log(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(machine_log.ENV_MACHINE_LOG, raising=False)
    machine_log.machine_note("threads: 2 (2 cores)")
    assert capsys.readouterr().out == "threads: 2 (2 cores)\n"
    log = tmp_path / "sub" / "nb.machine.log"
    monkeypatch.setenv(machine_log.ENV_MACHINE_LOG, str(log))
    machine_log.machine_note("threads: 1 (2 cores)")
    machine_log.machine_note("bf16 measured")
    assert capsys.readouterr().out == ""
    assert log.read_text().splitlines() == ["threads: 1 (2 cores)", "bf16 measured"]


def test_shown_path_is_relative_inside_the_repository_only(tmp_path):
    assert pipeline.shown_path(REPO / "outputs" / "demo" / "ral_demo") == "outputs/demo/ral_demo"
    assert pipeline.shown_path(tmp_path / "x") == str(tmp_path / "x")
    # a relative parameter names the same folder once a notebook resolves it from the repository root
    assert pipeline.resolve_path(pipeline.shown_path(REPO / "data")) == (REPO / "data").resolve()


def test_demo_parameters_name_no_machine_path():
    out = REPO / "outputs" / "demo"
    for name in pipeline.NOTEBOOKS:
        params = pipeline.demo_parameters(name, out, out / pipeline.DEMO_RUN_NAME, REPO / "data", out / "figures",
                                          "cpu", 2)
        assert not any(str(REPO) in str(v) for v in params.values()), (name, params)


def test_reload_sentence_names_the_run_relatively(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    sentence = pipeline.reload_sentence(run)
    assert "(2 epochs trained earlier)" in sentence and sentence.count(".") >= 1 and "\n" not in sentence


@pytest.mark.slow
def test_executed_notebooks_hold_no_machine_lines(tmp_path):
    """01 as the main job runs it (bundled data, parameters from demo_parameters), and a notebook whose
    library calls announce threads: the saved copies hold neither the repository path nor a threads line."""
    out = REPO / "outputs" / "test-machine-lines"  # inside the repository, like outputs/demo
    try:
        params = pipeline.demo_parameters("01_data_inspection.ipynb", out, out / "run", REPO / "data", out / "figures",
                                          "cpu", 1)
        executed = pipeline.run_notebook(REPO / "notebooks" / "01_data_inspection.ipynb",
                                         out / "notebooks" / "01_data_inspection.ipynb", params)
        text = _all_text(executed)
        assert str(REPO) not in text
        assert "threads:" not in text

        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell("from ralbook.runtime import threads\nthreads.reset()\n"
                                              "threads.configure_threads()\nprint('done', x)")]
        nbformat.write(nb, tmp_path / "threads.ipynb")
        executed = pipeline.run_notebook(tmp_path / "threads.ipynb", out / "notebooks" / "threads.ipynb", {"x": 2})
        text = _all_text(executed)
        assert "done 2" in text and "threads:" not in text and str(REPO) not in text
        assert "threads:" in pipeline.machine_log_of(executed).read_text()
    finally:
        shutil.rmtree(out, ignore_errors=True)
