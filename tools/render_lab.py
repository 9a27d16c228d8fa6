"""Open a notebook in a real JupyterLab in headless Chromium, run it, type a query into its query box, and check.

Papermill runs the notebooks headlessly, where 05's query box is static; this tool checks the interactive path a
student takes: the ipywidgets render in JupyterLab (no "Loading widget...", no text repr such as
``VBox(children=...)``); a query typed into the text box and submitted with Enter, then another submitted with
the ``rank`` button, each replaces the output below the box with one that names every word of the query and
holds figures the browser can draw; and no cell or widget output holds a traceback or "Error displaying widget".

Steps: copy the notebook (with the given parameters in a cell after its parameters cell, as papermill injects
them) into a temporary folder; start ``jupyter lab`` there on a free local port with a random token and its own
configuration and settings folders (no news fetched); open the notebook in Chromium through playwright; Run > Run
All Cells; wait until every code cell has run and the kernel is idle; screenshot the query box; select its text,
type ``--query`` and press Enter; wait until the kernel is idle and the output has settled; screenshot again;
the same with ``--click-query`` and the box's ``rank`` button; collect the error outputs. Screenshots (of the
whole query box, the window made as tall as the box): ``PREFIX_0_run_all.png``, ``PREFIX_1_enter.png``,
``PREFIX_2_click.png``, the figures below the box as the kernel sent them (``PREFIX_1_enter_fig0.png``, ...), and
``PREFIX_page.png`` (the 1280 x 800 window at the end).

Needs jupyterlab and ipywidgets (ralbook's dependencies), playwright (the ``test`` extra) and a Chromium binary
on PATH (``chromium``, ``chromium-browser`` or ``google-chrome``): playwright's own browser download is never
used, and nothing is fetched from the network. The kernel imports the ``ralbook`` that this process imports
(its folder goes first on the kernel's PYTHONPATH).

    python tools/render_lab.py --run outputs/demo/ral_demo --query "someone throws the yellow ball in the park"

Exit status 0 when every check passes, 1 (the failed checks listed) otherwise. tests/test_lab_render.py runs
:func:`render_lab` on a tiny trained run.
"""
from __future__ import annotations

import argparse
import ast
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import nbformat

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the checkout's ralbook
    sys.path.insert(0, str(REPO))

import ralbook  # noqa: E402
from ralbook.errors import RalbookError  # noqa: E402

DEFAULT_NOTEBOOK = REPO / "notebooks" / "05_word_confidence.ipynb"
# typed after Run All Cells: the first submitted with Enter, the second with the rank button
DEFAULT_QUERIES = (("someone throws the yellow ball in the park", "enter"),
                   ("somebody eats the green apple in the kitchen", "click"))
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
VIEWPORT = {"width": 1280, "height": 800}  # a common projector resolution
BOX = ".jp-OutputArea-output .widget-vbox:has(.widget-text input)"  # the query box: a VBox holding a text field
STDERR = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
# Lab settings of the temporary server: never fetch news or check for updates (no network, no toast over cells).
SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False}}


@dataclass
class BoxState:
    """The query box as the browser showed it once the kernel was idle: the query in the text field, the text
    and the image sources (data URLs) of the output below it, and its screenshot."""
    query: str
    how: str  # "run all" (the example), "enter" or "click" (how this query was submitted)
    text: str
    images: list[str]
    broken: int = 0  # images the browser could not decode
    screenshot: Optional[Path] = None


@dataclass
class LabCheck:
    """What the browser showed: the query box after Run All Cells and after each submitted query, the error
    texts found on the page, and the screenshot paths."""
    states: list[BoxState] = field(default_factory=list)
    widget_rendered: bool = False  # a text field, a button and an output area drawn by the widget manager
    errors: list[str] = field(default_factory=list)  # tracebacks, widget errors, widgets left unrendered
    stderr: list[str] = field(default_factory=list)  # every stderr output of the page (warnings included)
    console_errors: list[str] = field(default_factory=list)  # the browser console's errors (for the report)
    screenshots: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """The checks that failed, one sentence each; empty when the query box works."""
        bad = [] if self.widget_rendered else ["the query box was not rendered as widgets"]
        if not self.states:
            bad.append("the query box was never shown")
        for before, after in zip(self.states, self.states[1:]):
            if (before.text, before.images) == (after.text, after.images):
                bad.append(f"the output below the query box did not change after {after.query!r} ({after.how})")
        for state in self.states:
            if not state.images:
                bad.append(f"no figure below the query box for {state.query!r} ({state.how})")
            if state.broken:
                bad.append(f"{state.broken} figure(s) the browser could not draw for {state.query!r} ({state.how})")
            missing = [w for w in state.query.lower().split() if w not in state.text.lower().split()]
            if missing:  # 05 prints every word: encoded, or named as left out
                bad.append(f"the output below the query box does not name {missing} of {state.query!r} ({state.how})")
        return bad + self.errors


def find_chromium() -> Optional[str]:
    """The first Chromium-like browser on PATH, or None."""
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


def free_port() -> int:
    """A local TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_parameters(src: str | os.PathLike, dst: str | os.PathLike, parameters: Mapping[str, Any]) -> Path:
    """Copy notebook ``src`` to ``dst`` with ``name = value`` lines in a cell after its parameters cell.

    Values must be Python literals (they are written with ``repr`` and read back to check)."""
    nb = nbformat.read(src, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if parameters and not tagged:
        raise RalbookError(f"{src}: no cell tagged 'parameters' to put {sorted(parameters)} after")
    lines = []
    for name, value in parameters.items():
        if not name.isidentifier():
            raise RalbookError(f"{src}: parameter name {name!r} is not a Python name")
        try:
            ast.literal_eval(repr(value))
        except (ValueError, SyntaxError) as err:
            raise RalbookError(f"{src}: parameter {name} = {value!r} is not a Python literal") from err
        lines.append(f"{name} = {value!r}")
    if lines:
        cell = nbformat.v4.new_code_cell("# Parameters set by tools/render_lab.py\n" + "\n".join(lines),
                                         metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(tagged[0] + 1, cell)
    out = Path(dst)
    nbformat.write(nb, out)
    return out


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def kernels_idle(base: str, token: str) -> bool:
    """True when the server runs at least one kernel and all of them are idle."""
    kernels = _get_json(f"{base}/api/kernels?token={token}")
    return bool(kernels) and all(k.get("execution_state") == "idle" for k in kernels)


def _wait(condition, timeout: float, what: str, every: float = 0.25) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OSError:  # the server is still starting
            pass
        if time.monotonic() > end:
            raise RalbookError(f"render_lab: gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def kernel_environment() -> dict[str, str]:
    """This process's environment for the server and its kernels: ralbook's folder first on PYTHONPATH, and
    without the variable that makes notebooks static (``RALBOOK_HEADLESS``, set by papermill runs)."""
    from ralbook.workbook.pipeline import HEADLESS_ENV

    env = {k: v for k, v in os.environ.items() if k != HEADLESS_ENV}
    package_parent = str(Path(ralbook.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@contextmanager
def lab_server(root: Path, timeout: float = 60) -> Iterator[tuple[str, str]]:
    """Run ``jupyter lab`` on ``root`` (no browser, a free port, a random token, configuration and settings in
    ``root/.lab``); yields (base URL, token) once it answers, and stops it and its kernels afterwards."""
    token, port = secrets.token_hex(16), free_port()
    home = root / ".lab"
    settings = home / "settings"
    for rel, values in SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(values))
    env = kernel_environment()
    env.update({"JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")})
    args = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
            "--LabApp.extension_manager=readonly", "--ServerApp.log_level=WARN"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        args.append("--allow-root")
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is not None or bool(_get_json(f"{base}/api/status?token={token}")), timeout,
              "jupyter lab to answer")
        if proc.poll() is not None:
            raise RalbookError(f"render_lab: jupyter lab exited with {proc.returncode}: "
                               f"{(home / 'server.log').read_text(errors='replace')[-2000:]}")
        yield base, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own group: the server and its kernels
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


_PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
    .map(p => p.textContent.trim())"""


def _all_cells_ran(page) -> bool:
    """True when every code cell shows an execution count; RalbookError when a cell failed (Run All stops)."""
    failed = [t for t in page.locator(STDERR).all_inner_texts() if "Traceback" in t]
    if failed:
        raise RalbookError(f"render_lab: a cell failed during Run All Cells: {failed[0].strip()[-1500:]}")
    prompts = page.evaluate(_PROMPTS_JS)
    return bool(prompts) and all(p.startswith("[") and p[1:-2].isdigit() for p in prompts)


# resolves after the browser has drawn twice: a cell just scrolled into view is then laid out and its text readable
_TWO_FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


# each <img> as [src, decoded]: waits until the browser has decoded it (false: a picture it cannot draw)
_DECODED = """imgs => Promise.all(imgs.map(i => i.decode().then(() => true, () => false)
    .then(ok => [i.getAttribute('src') || '', ok && i.naturalWidth > 0])))"""


def _box_state(page, query: str, how: str) -> BoxState:
    """The query box's output area now (scrolled into view first: JupyterLab skips drawing cells out of view,
    and their text then reads empty)."""
    out = page.locator(f"{BOX} .widget-output").first
    out.scroll_into_view_if_needed()
    page.evaluate(_TWO_FRAMES)
    drawn = out.locator("img").evaluate_all(_DECODED)
    images = [src for src, _ in drawn]
    return BoxState(query, how, out.inner_text(), images, broken=sum(1 for _, ok in drawn if not ok))


def lab_kernel_idle(page) -> bool:
    """The kernel state JupyterLab's status bar shows ("Python 3 (ipykernel) | Idle"). Unlike the server's
    ``/api/kernels``, which tracks execute requests only, it also goes busy for widget messages (a typed query)."""
    return bool(re.search(r"\|\s*Idle\b", page.locator("#jp-main-statusbar").inner_text()))


def box_busy(page) -> bool:
    """The query box's status line still says "ranking QUERY ..." (query_box puts its hint back when the ranking,
    the table and both figures are out): the status bar can read Idle between the messages of one query on a
    loaded machine, so a quiet spell alone does not prove the figures are in."""
    status = page.locator(f"{BOX} .widget-html")
    return status.count() > 0 and status.first.inner_text().strip().startswith("ranking")


def _settle(page, base: str, token: str, timeout: float, what: str, quiet: float = 2.0) -> None:
    """Wait until the kernel is idle (server and status bar) and the query box's output has stayed the same
    for ``quiet`` seconds."""
    _wait(lambda: kernels_idle(base, token), timeout, f"the kernel to go idle ({what})")
    last, since = None, time.monotonic()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        html = page.locator(BOX).first.inner_html()
        if html != last or not lab_kernel_idle(page) or box_busy(page):
            last, since = html, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)
    raise RalbookError(f"render_lab: the query box kept changing for {timeout:.0f} s ({what})")


def shoot_box(page, box, path: str) -> None:
    """Screenshot the whole query box: the notebook scrolls inside its own panel, so a box taller than the
    window is cut off; the window is made tall enough (same width) for the shot, then set back."""
    height = (box.bounding_box() or {}).get("height", 0)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": int(min(6000, max(VIEWPORT["height"], height + 300)))})
    try:
        box.scroll_into_view_if_needed()
        box.locator("img").evaluate_all(_DECODED)  # pictures drawn, not blank, in the shot
        last = None
        for _ in range(20):  # the lab relayouts its panels: wait until the box stays put (a shot taken while it
            page.wait_for_timeout(250)  # moved drew a figure offset from its own axes)
            now = box.bounding_box()
            if now == last:
                break
            last = now
        page.evaluate(_TWO_FRAMES)
        box.screenshot(path=path, animations="disabled")
    finally:
        page.set_viewport_size(VIEWPORT)


def save_figures(sources: Sequence[str], prefix: str) -> list[Path]:
    """Write the PNG data URLs among ``sources`` to ``PREFIX_fig<N>.png`` (the figures as the kernel sent them,
    to tell a figure's own defects from the browser's drawing of it)."""
    paths = []
    for k, src in enumerate(s for s in sources if s.startswith("data:image/png;base64,")):
        path = Path(f"{prefix}_fig{k}.png")
        path.write_bytes(base64.b64decode(src.split(",", 1)[1]))
        paths.append(path)
    return paths


def page_errors(page) -> tuple[list[str], list[str]]:
    """(errors, every stderr text): tracebacks and error lines in stderr outputs, widgets that failed or never
    rendered, and widgets shown as their text repr."""
    stderr = page.locator(STDERR).all_inner_texts()
    errors = [f"error output: {t.strip()[-600:]}" for t in stderr if "Traceback" in t or "Error" in t]
    body = page.locator(".jp-Notebook").inner_text()
    for needle in ("Error displaying widget", "Loading widget...", "Box(children=", "Text(value=", "Progress(value="):
        if needle in body:  # a widget that failed, never rendered, or shows as its text repr
            errors.append(f"the notebook shows {needle!r}")
    return errors, stderr


def submit(page, box, query: str, how: str) -> None:
    """Type ``query`` over the box's text the way a person does (select all, type), then press Enter
    (``how="enter"``) or click the rank button (``how="click"``)."""
    text = box.locator(".widget-text input")
    text.click()
    text.press("ControlOrMeta+a")
    text.press_sequentially(query, delay=20)
    if how == "enter":
        text.press("Enter")
    elif how == "click":
        box.locator("button", has_text="rank").click()
    else:
        raise RalbookError(f"render_lab: how={how!r}: expected 'enter' or 'click'")


def check_query_box(base: str, token: str, notebook: str, queries: Sequence[tuple[str, str]],
                    shots: str | os.PathLike, chromium: str, timeout: float = 120) -> LabCheck:
    """Open ``notebook`` (a name under the server's root) in Chromium, run all cells, submit each (query, how)
    of ``queries`` into the query box (see :func:`submit`), and report what the page showed
    (:class:`LabCheck`); the query box's screenshots go to ``SHOTS_<k>_<how>.png``, the window's to
    ``SHOTS_page.png``, the figures below the box to ``SHOTS_<k>_<how>_fig<N>.png``."""
    from playwright.sync_api import sync_playwright

    result, t0 = LabCheck(), time.monotonic()
    shots = str(shots)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: result.console_errors.append(f"page error: {e}"))
            page.goto(f"{base}/lab/tree/{notebook}?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
            _wait(lambda: kernels_idle(base, token), timeout, "the notebook's kernel to start")
            result.seconds["opened"] = time.monotonic() - t0
            page.locator("#jp-menu-panel .lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            _wait(lambda: _all_cells_ran(page), timeout, "every code cell to run (Run > Run All Cells)", every=0.5)
            page.locator(f"{BOX} .widget-output img").first.wait_for(timeout=timeout * 1000)
            _settle(page, base, token, timeout, "after Run All Cells")
            result.seconds["ran"] = time.monotonic() - t0
            box = page.locator(BOX).first
            result.widget_rendered = all(box.locator(css).count() == 1
                                         for css in (".widget-text input", ".widget-button", ".widget-output"))
            steps = [(box.locator(".widget-text input").input_value(), "run all"), *queries]
            for k, (query, how) in enumerate(steps):
                if k:
                    previous = result.states[-1]
                    submit(page, box, query, how)
                    def changed() -> bool:
                        now = _box_state(page, query, how)
                        return (now.text, now.images) != (previous.text, previous.images)

                    _wait(changed, timeout, f"the output to change after {query!r} ({how})")
                    _settle(page, base, token, timeout, f"after {query!r} ({how})")
                    try:  # the figures follow the table; give a loaded browser time to attach them
                        _wait(lambda: bool(_box_state(page, query, how).images), min(timeout, 20.0),
                              f"a figure below the box after {query!r} ({how})")
                    except RalbookError:
                        pass  # reported as "no figure below the query box" by LabCheck.failures
                    result.seconds[f"query {k}"] = time.monotonic() - t0
                state = _box_state(page, query, how)
                state.screenshot = Path(f"{shots}_{k}_{how.replace(' ', '_')}.png")
                shoot_box(page, box, str(state.screenshot))
                result.states.append(state)
                result.screenshots += [state.screenshot, *save_figures(state.images, str(state.screenshot)[:-4])]
            page.screenshot(path=f"{shots}_page.png")
            result.screenshots.append(Path(f"{shots}_page.png"))
            result.errors, result.stderr = page_errors(page)
        finally:
            browser.close()
    return result


def render_lab(notebook: str | os.PathLike = DEFAULT_NOTEBOOK, parameters: Optional[Mapping[str, Any]] = None,
               queries: Sequence[tuple[str, str]] = DEFAULT_QUERIES, shots: str | os.PathLike = "lab",
               timeout: float = 120, chromium: Optional[str] = None) -> LabCheck:
    """Copy ``notebook`` with ``parameters`` to a temporary folder, serve it with JupyterLab and run
    :func:`check_query_box` on it. The notebook's figures go to that folder unless ``figures_dir`` is given."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RalbookError(f"render_lab: no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
    src = Path(notebook)
    with tempfile.TemporaryDirectory(prefix="ralbook-lab-") as tmp:
        root = Path(tmp)
        with_parameters(src, root / src.name, {"figures_dir": str(root / "figures"), **dict(parameters or {})})
        with lab_server(root, timeout=timeout) as (base, token):
            return check_query_box(base, token, src.name, queries, shots, chromium, timeout)


def _parameter(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected NAME=VALUE")
    try:
        return name.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name.strip(), value  # a plain string


def report(check: LabCheck) -> str:
    """What the browser showed, for a person: per state the query and the output's text, then stderr outputs,
    console errors, screenshots and the failed checks."""
    lines = [f"widgets rendered: {check.widget_rendered}; "
             f"seconds: {json.dumps({k: round(v, 1) for k, v in check.seconds.items()})}"]
    for state in check.states:
        lines.append(f"--- after {state.how}: {state.query!r}, {len(state.images)} figure(s); output text:")
        lines.append(state.text[:1200])
    lines += [f"--- stderr output:\n{t[:800]}" for t in check.stderr]
    lines += [f"--- browser console error: {t[:300]}" for t in check.console_errors]
    lines.append("screenshots: " + ", ".join(str(p) for p in check.screenshots))
    lines += [f"FAILED: {line}" for line in check.failures()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notebook", default=str(DEFAULT_NOTEBOOK), help="the notebook (default: 05)")
    ap.add_argument("--run", default="", help="run_dir parameter (relative paths start at the repository root)")
    ap.add_argument("--set", dest="params", action="append", type=_parameter, default=[],
                    help="NAME=VALUE: another notebook parameter (a Python literal or a plain string)")
    ap.add_argument("--query", default=DEFAULT_QUERIES[0][0], help="the query typed, then Enter")
    ap.add_argument("--click-query", default=DEFAULT_QUERIES[1][0], help="the query typed next, then the rank button")
    ap.add_argument("--shots", default=os.path.join(tempfile.gettempdir(), "lab"),
                    help="screenshot prefix (PREFIX_0_run_all.png, PREFIX_1_enter.png, PREFIX_2_click.png, ...)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed for each wait")
    args = ap.parse_args(argv)
    params = dict(args.params)
    if args.run:
        params["run_dir"] = str(Path(args.run) if Path(args.run).is_absolute() else REPO / args.run)
    check = render_lab(args.notebook, params, [(args.query, "enter"), (args.click_query, "click")], args.shots,
                       args.timeout)
    print(report(check))
    return 1 if check.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
