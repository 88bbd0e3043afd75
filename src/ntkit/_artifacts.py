"""What the report and the reproductions write: figures (PNG + SVG), strict JSON, checks, resumable records,
and the style of their HTML pages.

Shared by ``ntkit.report`` and ``ntkit.reproduce`` so that both write the same kinds of files the same way.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "COLORS",
    "PAGE_CSS",
    "Check",
    "embedded_png",
    "escape",
    "new_figure",
    "one_cpu_thread",
    "read_record",
    "save_figure",
    "style",
    "to_json",
    "write_atomic",
    "write_record",
]

# --- figures ---------------------------------------------------------------------------------------------

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
    """The pages' matplotlib style, as a context manager: figures are drawn and saved inside it."""
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


# --- numbers and checks ----------------------------------------------------------------------------------


@dataclass
class Check:
    """A prediction of the theory tested on the measured numbers, shown in a page's summary table."""

    name: str
    statement: str  # what the theory predicts, in words
    measured: str  # what was measured, in words and numbers
    passed: bool


def to_json(value: Any) -> Any:
    """Tensors, arrays and numpy scalars as plain lists and floats; NaN and inf as null (strict JSON)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


# --- files -----------------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name, so a file under its final name is complete."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_record(path: Path, fingerprint: str, result: Any) -> None:
    """Keep a finished piece of work on disk under ``fingerprint`` (strict JSON), for resuming."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"fingerprint": fingerprint, "result": to_json(result)}, allow_nan=False))


def read_record(path: Path, fingerprint: str) -> Any | None:
    """The result kept by :func:`write_record` for this very ``fingerprint``, or None (missing, damaged or
    stale)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        return None
    return saved.get("result")


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run PyTorch's CPU work on one thread, restoring the setting after.

    The matrices of the report and the reproductions are small (tens to hundreds of rows), where a second
    thread gains little and, on cores shared with other work, spin-waiting threads make training 10-20 times
    slower (measured).
    """
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- HTML ------------------------------------------------------------------------------------------------

PAGE_CSS = """
:root { --ink: #1b1b1b; --muted: #555; --line: #d8d8d8; --pass: #0a7a3d; --fail: #b00020;
        --bg-soft: #f5f6f8; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 1rem 1rem 3rem; }
h1 { font-size: 1.6rem; line-height: 1.25; margin: 0.6rem 0 0.4rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 0.6rem; padding-top: 0.6rem; border-top: 1px solid var(--line); }
p.meta { color: var(--muted); margin: 0.2rem 0; font-size: 0.95rem; }
figure { margin: 0.8rem 0; }
figure img { display: block; width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { margin-top: 0.5rem; font-size: 0.97rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; width: 100%; font-size: 0.95rem; margin: 0.6rem 0; }
th, td { text-align: left; vertical-align: top; padding: 0.35rem 0.5rem;
         border-bottom: 1px solid var(--line); }
th { background: var(--bg-soft); font-weight: 600; }
td.verdict { white-space: nowrap; font-weight: 600; }
td.pass { color: var(--pass); }
td.fail { color: var(--fail); }
nav ol { padding-left: 1.3rem; margin: 0.4rem 0; columns: 2 16rem; }
pre { background: var(--bg-soft); padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; border-radius: 4px; }
.files { font-size: 0.9rem; color: var(--muted); }
p.swipe { display: none; margin: 0.2rem 0 0; font-size: 0.85rem; color: var(--muted); }
a { color: #0b5cad; }
@media (max-width: 600px) {
  body { font-size: 15px; }
  main { padding: 0.6rem 0.6rem 2rem; }
  h1 { font-size: 1.35rem; }
  th, td { padding: 0.3rem 0.35rem; }
  figure .scroll img { width: 760px; max-width: none; }
  p.swipe { display: block; }
}
@media print {
  @page { margin: 1.4cm; }
  body { font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  nav, .files, p.swipe { display: none; }
  figure .scroll { overflow: visible; }
  figure .scroll img { width: 100%; }
  h2 { break-after: avoid; page-break-after: avoid; }
  figure, table, tr { break-inside: avoid; page-break-inside: avoid; }
  figure img { border: none; }
  a { color: inherit; text-decoration: none; }
  pre { white-space: pre-wrap; }
}
"""


def escape(text: object) -> str:
    """``text`` as HTML, quotes escaped too (safe inside attributes)."""
    return html.escape(str(text), quote=True)


def embedded_png(path: Path, alt: str) -> str:
    """An <img> carrying the PNG at ``path`` inside the page (base64), so the page needs no other file."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}">'


def check_out_folder(out: str | os.PathLike, option: str = "--out") -> Path:
    """``out`` as a Path, once it is known that a folder can be made or written there; creates nothing.

    Raises:
        ValueError: one line naming ``option`` when ``out`` is a file, lies inside a file, or its nearest
            existing folder is not writable.
    """
    directory = Path(out).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{option} {out}: is a file, not a folder; name a folder (it is created if needed)")
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {out}: {existing} is a file, so no folder can be made inside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the folder" if existing == directory else f"{existing}, where it would be made,"
        raise ValueError(f"{option} {out}: {where} is not writable; choose a folder you can write to")
    return directory
