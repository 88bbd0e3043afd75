"""Figure helpers for the report: matplotlib's object API on the Agg canvas, saved as PNG and SVG.

They live in ``ntkit._artifacts``, shared with ``ntkit.reproduce``; the sections import them from here.
"""

from __future__ import annotations

from .._artifacts import COLORS, new_figure, save_figure, style

__all__ = ["COLORS", "new_figure", "save_figure", "style"]
