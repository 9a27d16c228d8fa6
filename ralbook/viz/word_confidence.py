"""Figures and the query box of 05 (word confidence), readable on a projector.

* :func:`relative_confidence_strips` - one strip per caption: each word's relative confidence ``g * n_words``
  on a diverging scale centred at 1 (the uniform share), so a word above its share is red, below it blue,
  at its share white; value labels and words at least ``MIN_FONT`` points at the size the notebook shows
  (the figure is at most ``MAX_WIDTH`` inches wide, which a notebook shows unscaled at 100 dpi).
* :func:`query_box` - a text box (ipywidgets) with a ``rank`` button that calls a ``render(text)`` for each
  query submitted.
"""
from __future__ import annotations

import html
import textwrap
from typing import Callable, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ralbook.errors import DataError

MIN_FONT = 10.0   # smallest text, points at the figure's size
MAX_WIDTH = 9.5   # inches: about the width of a notebook's output area at 100 dpi, so nothing is scaled down
CMAP = "RdBu_r"   # diverging: blue below the uniform share, red above


def wrap_title(text: str, width_in: float, fontsize: float = MIN_FONT + 1) -> str:
    """Wrap on spaces only (never inside a word) to lines that fit ``width_in`` at ``fontsize`` (mean glyph
    width about 0.55 em); a single word longer than a line stays whole."""
    chars = max(12, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars, break_long_words=False, break_on_hyphens=False))


def centred_norm(values: Sequence[np.ndarray], half_range: Optional[float] = None) -> TwoSlopeNorm:
    """A colour scale with white at relative confidence 1, symmetric: 1 +- ``half_range``.

    Default half-range: the largest distance of a value from 1, rounded up to 0.05 and at least 0.1, so
    that weights close to uniform (0.95 to 1.05) still show as light colours instead of all white, and
    the same colour means the same distance from uniform above and below 1.
    """
    if half_range is None:
        far = max((float(np.max(np.abs(v - 1.0))) for v in values if np.size(v)), default=0.0)
        half_range = max(0.1, float(np.ceil(far / 0.05 - 1e-9)) * 0.05)
    if not half_range > 0:
        raise DataError(f"centred_norm: half_range must be > 0, got {half_range}")
    return TwoSlopeNorm(vmin=1.0 - half_range, vcenter=1.0, vmax=1.0 + half_range)


def relative_confidence_strips(queries: Sequence[tuple[str, Sequence[str], np.ndarray]],
                               fillers: frozenset[str] | set[str] = frozenset(),
                               half_range: Optional[float] = None) -> Figure:
    """One strip per query (title, words, relative confidences ``g * n_words``), centred at 1 = uniform share.

    Filler words (``fillers``) are written in grey italics on the axis. Colours run from ``1 - half_range``
    (blue) through white at exactly 1 to ``1 + half_range`` (red); see :func:`centred_norm`. Each cell
    also prints its value, so the colour only guides the eye.
    """
    if not queries:
        raise DataError("relative_confidence_strips: no queries to draw")
    for title, words, rel in queries:
        if len(np.asarray(rel)) < len(words):
            raise DataError(f"relative_confidence_strips: {title!r} has {len(words)} words but "
                            f"{len(np.asarray(rel))} confidences")
    longest = max(len(w) for _, w, _ in queries)
    width = min(MAX_WIDTH, max(6.0, 0.68 * longest + 1.6))
    norm = centred_norm([np.asarray(r, dtype=float)[: len(w)] for _, w, r in queries], half_range)
    titles = [wrap_title(t, width - 0.3) for t, _, _ in queries]
    heights = [1.15 + 0.2 * t.count("\n") for t in titles]
    fig, axes = plt.subplots(len(queries), 1, figsize=(width, max(2.6, sum(heights) + 0.9)), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": heights})
    image = None
    for ax, title, (_, words, rel) in zip(axes[:, 0], titles, queries):
        rel = np.asarray(rel, dtype=float)[: len(words)]
        image = ax.imshow(rel[None, :], aspect="auto", cmap=CMAP, norm=norm)
        for t, value in enumerate(rel):
            strong = abs(norm(value) - 0.5) > 0.3
            ax.text(t, 0, f"{value:.2f}", ha="center", va="center", fontsize=MIN_FONT,
                    color="white" if strong else "black")
        ax.set_xticks(range(len(words)), words, rotation=35, ha="right", rotation_mode="anchor", fontsize=MIN_FONT + 1)
        for label, word in zip(ax.get_xticklabels(), words):
            if word.lower() in fillers:
                label.set_color("0.4")
                label.set_style("italic")
        ax.set_yticks([])
        ax.set_title(title, fontsize=MIN_FONT + 1, loc="left")
        ax.grid(False)
    bar = fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.04, pad=0.01, aspect=25)
    bar.set_label("relative confidence\n(1 = uniform share)", fontsize=MIN_FONT)
    bar.ax.tick_params(labelsize=MIN_FONT)
    return fig


QUERY_HINT = "type words of the vocabulary, then press Enter or click <b>rank</b>"


def shown_figures(figures: object) -> int:
    """Display each figure ``render`` returned (a dict or sequence of Figures) and close it; returns how many.

    Explicit, not ``plt.show()``: from a widget callback the inline backend's show left a query's figures off the
    page now and then (seen in a browser: the table shown, no figure); a figure that is displayed and closed
    here cannot be dropped or shown twice. Anything else ``render`` returned falls back to ``plt.show()``.
    """
    from IPython.display import display

    if isinstance(figures, Mapping):
        items = list(figures.values())
    elif isinstance(figures, (list, tuple)):
        items = list(figures)
    else:
        items = []
    figs = [f for f in items if isinstance(f, Figure)]
    if not figs:
        plt.show()
        return 0
    for fig in figs:
        display(fig)
        plt.close(fig)
    return len(figs)


def query_box(render: Callable[[str], object], example: str = "", description: str = "query") -> object:
    """A text box (ipywidgets) that runs ``render(text)`` into an output area for each query submitted.

    A query is submitted with Enter, by leaving the box, or with the ``rank`` button (a student who types and
    waits otherwise sees nothing happen); a line between box and output says what to do and, while ``render``
    runs (a second or two), which query is being ranked, since the output keeps the previous query's results
    until the new ones arrive. A query equal to the one shown is not run again (leaving the box and clicking
    the button submit the same text twice). ``example`` is rendered at once, so the box never opens empty.
    Returns the widget box after displaying it; notebooks open it only when a person runs them (never under
    papermill).
    """
    import ipywidgets as widgets
    from IPython.display import display

    text = widgets.Text(value=example, placeholder="words of the demo vocabulary, e.g. a person opens the door",
                        description=description, continuous_update=False, layout=widgets.Layout(width="80%"))
    button = widgets.Button(description="rank", tooltip="rank the videos for the typed query (or press Enter)",
                            button_style="primary", layout=widgets.Layout(width="auto"))
    status = widgets.HTML(value=QUERY_HINT)
    out = widgets.Output()
    shown: list[Optional[str]] = [None]  # the query whose results the output holds

    def show(_: object = None) -> None:
        query = text.value
        if query == shown[0]:
            return
        shown[0] = query
        status.value = f"ranking <i>{html.escape(query)}</i> ..."
        out.clear_output(wait=True)
        with out:
            shown_figures(render(query))
        status.value = QUERY_HINT

    text.observe(show, names="value")
    button.on_click(show)
    box = widgets.VBox([widgets.HBox([text, button]), status, out])
    display(box)
    show()
    return box
