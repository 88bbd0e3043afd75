"""Figure helpers for the report: matplotlib's object API on the Agg canvas, saved as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["COLORS", "new_figure", "save_figure", "style"]

# Okabe-Ito: distinguishable for colour-blind readers and in greyscale print
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]

_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",  # text stays text in the SVG: smaller and searchable
    "axes.prop_cycle": mpl.cycler(color=COLORS),
}


def style():
    """The report's matplotlib style, as a context manager: sections draw and save inside it."""
    return mpl.rc_context(_STYLE)


def new_figure(rows: int, cols: int, *, width: float = 10.0, row_height: float = 3.8) -> tuple[Figure, list]:
    """A figure with a rows x cols grid of axes (returned flat), not attached to any pyplot state.

    Using ``Figure`` with the Agg canvas directly keeps the caller's pyplot backend untouched (in a
    notebook, too).
    """
    figure = Figure(figsize=(width, row_height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def save_figure(figure: Figure, directory: Path, name: str) -> dict[str, str]:
    """Write ``name``.png (150 dpi) and ``name``.svg into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for extension, options in (("png", {"dpi": 150}), ("svg", {})):
        path = directory / f"{name}.{extension}"
        partial = directory / f"{name}.partial.{extension}"
        figure.savefig(partial, format=extension, **options)
        partial.replace(path)  # a file under its final name is always complete
        paths[extension] = str(path)
    return paths
