"""Run one experiment: settings, device, resumable pieces, then figures, metrics.json and index.html."""

from __future__ import annotations

import importlib
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import torch

from .._artifacts import one_cpu_thread, style, to_json, write_atomic
from ._base import Run
from ._page import render_page

__all__ = ["EXPERIMENTS", "experiment", "run_experiment"]

# experiment name -> module of this package
EXPERIMENTS = {
    "jacot2018-fig1": "jacot2018_fig1",
    "jacot2018-fig2": "jacot2018_fig2",
    "jacot2018-fig3": "jacot2018_fig3",
    "lee2019-linearized": "lee2019_linearized",
    "arora2019-random-labels": "arora2019_random_labels",
    "eoc-concentration": "eoc_concentration",
    "chizat2019-lazy": "chizat2019_lazy",
}


def experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (imported on first use)."""
    if name not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} (ntkit reproduce --list)"
        )
    return importlib.import_module(f".{EXPERIMENTS[name]}", __package__)


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a torch device: {err}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)"
        )
    return resolved


def run_experiment(
    name: str,
    out: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    device: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Run experiment ``name`` end to end and write it to ``out`` (default ./ntkit-reproduce/NAME).

    Writes figures/*.png and *.svg, metrics.json (settings, every number, the checks with their verdicts, the
    paper's values beside ours), index.html (self-contained) and records/*.json (finished pieces of work: a
    rerun with the same settings reuses them, so an interrupted run resumes). Returns the page's path.

    Args:
        name: one of `EXPERIMENTS`.
        quick: the same experiment at smaller sizes (seconds; what the test suite runs).
        device: "cpu" (default) or "cuda".
        progress: show progress bars (None: only on a terminal).
    """
    module = experiment(name)
    resolved = _device(device)
    directory = Path(f"ntkit-reproduce/{name}" if out is None else out)
    directory.mkdir(parents=True, exist_ok=True)
    settings = module.settings(quick)
    run = Run(name, settings, directory, quick=quick, device=resolved, progress=progress)
    start = time.perf_counter()
    with style(), torch.random.fork_rng(devices=[]), one_cpu_thread(resolved):
        torch.manual_seed(0)
        outcome = module.run(run)
    seconds = time.perf_counter() - start

    from .. import __version__

    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metrics = {
        "experiment": name,
        "title": module.TITLE,
        "source": module.SOURCE,
        "quick": quick,
        "device": str(resolved),
        "ntkit_version": __version__,
        "torch_version": torch.__version__,
        "generated": generated,
        "seconds": seconds,
        "reused_pieces": run.reused,
        "settings": settings,
        "checks": [check.__dict__ for check in outcome.checks],
        "all_checks_held": all(check.passed for check in outcome.checks),
        "paper_vs_ours": [comparison.__dict__ for comparison in outcome.comparisons],
        "notes": outcome.notes,
        "figures": outcome.figures,
        "metrics": outcome.metrics,
    }
    import json

    write_atomic(directory / "metrics.json", json.dumps(to_json(metrics), indent=1, allow_nan=False))
    meta = [
        f"Source: {module.SOURCE}.",
        f"{'Quick' if quick else 'Default'} run on {resolved} with ntkit {__version__} (torch {torch.__version__}), "
        f"{generated}, {seconds:.0f} s"
        + (f"; {len(run.reused)} piece(s) reused from an earlier run." if run.reused else "."),
        f"Command: ntkit reproduce {name}{' --quick' if quick else ''}",
    ]
    page = render_page(title=module.TITLE, meta=meta, outcome=outcome, figures=run.figures, settings=settings)
    write_atomic(directory / "index.html", page)
    held = sum(check.passed for check in outcome.checks)
    print(f"{name}: {held} of {len(outcome.checks)} checks held", file=sys.stderr)
    for check in outcome.checks:
        print(
            f"  [{'held' if check.passed else 'FAILED'}] {check.statement}: {check.measured}", file=sys.stderr
        )
    return directory / "index.html"
