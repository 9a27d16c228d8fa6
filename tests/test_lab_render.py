"""05's query box in a real JupyterLab, driven in headless Chromium (tools/render_lab.py).

Papermill runs 05 with a static query box; this is the path a student takes: the widgets render, a query typed
and submitted with Enter, then another with the rank button, each replaces the output below the box, and no
cell shows a traceback or a widget error. The ranking the browser shows is compared with ``demo_query`` computed
here on the same run. Skipped, saying why, without a Chromium binary (.ci/run installs Debian's ``chromium``)
or without playwright (the ``test`` extra); playwright's own browser download is never used.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
HAS_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
QUERIES = [("someone throws the yellow ball in the park", "enter"),
           ("somebody eats the green apple in the kitchen", "click")]

pytestmark = [
    pytest.mark.slow,
    # Opt-in: with the query box showing its figures through plt.show(), in 2 of 2 full-suite runs (and 1 of 5
    # runs alone) the figures of the query submitted with Enter never reached the page (table shown, status line
    # back to its hint, no image). The box now displays the figures render returns (viz.word_confidence.
    # shown_figures); 3 of 3 runs alone passed since, too few to make a browser check part of every CI run.
    pytest.mark.skipif(os.environ.get("RALBOOK_LAB_CHECK") != "1",
                       reason="the JupyterLab browser check is opt-in: RALBOOK_LAB_CHECK=1 (intermittent, see above)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run does)"),
    pytest.mark.skipif(not HAS_PLAYWRIGHT, reason="playwright is not installed (pip install -e '.[test]')"),
]


def _render_lab():
    """tools/render_lab.py as a module (tools/ is not a package)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import render_lab
    finally:
        sys.path.remove(str(REPO / "tools"))
    return render_lab


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One epoch on a small generated demo collection: the box needs a model, not a good one."""
    from ralbook.data.demo import generate_demo
    from ralbook.workbook import pipeline

    root = tmp_path_factory.mktemp("lab_data")
    generate_demo(root, n_train=40, n_val=10, n_test=20)
    run = tmp_path_factory.mktemp("lab_run") / "run"
    return pipeline.ensure_run(run, "demo", data_root=str(root), epochs=1, hidden_size=32, device="cpu",
                               progress=False, train_if_missing=True)


def _expected_ranking(run: Path, query: str) -> list[str]:
    """The top videos of 05's query box for ``query``, computed here with the notebook's own defaults."""
    from ralbook.data.demo_text import DemoTextEncoder
    from ralbook.studies import word_confidence as wc
    from ralbook.workbook import pipeline

    cfg, model, coll = pipeline.open_run(run, "cpu", "")
    truth = pipeline.ground_truth(cfg.data.data_root, cfg.data.collection)
    encoder = DemoTextEncoder.from_collection(coll.dir)
    return [h.video for h in wc.demo_query(model, coll, encoder, truth, query, coll.videos("test"), top=5,
                                           seed=0).hits]


def test_query_box_works_in_jupyterlab(tiny_run, tmp_path):
    lab = _render_lab()
    params = {"run_dir": str(tiny_run), "device": "cpu", "n_queries": 2, "n_frame_maps": 1, "n_localisation": 20,
              "n_boot": 200}
    check = lab.render_lab(REPO / "notebooks" / "05_word_confidence.ipynb", params, QUERIES, tmp_path / "lab",
                           timeout=60, chromium=CHROMIUM)
    assert check.failures() == [], lab.report(check)
    assert check.widget_rendered and check.errors == []
    # the example shown after Run All Cells, then each submitted query
    assert [s.how for s in check.states] == ["run all", "enter", "click"]
    assert [s.query for s in check.states[1:]] == [q for q, _ in QUERIES]
    for before, after in zip(check.states, check.states[1:]):
        assert after.text != before.text and after.images != before.images
    for state in check.states:
        assert len(state.images) == 2  # the word confidences and the top video's word-by-frame map
        assert f"encoded words: {state.query}" in " ".join(state.text.split())
        shown = [v for v in state.text.split() if v.startswith("v") and v[1:].isdigit()]
        assert shown == _expected_ranking(tiny_run, state.query), state.text
    for path in check.screenshots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
