"""The report pipeline: check the config, run the sections (resuming finished ones), write the outputs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._artifacts import one_cpu_thread as _one_cpu_thread
from .._artifacts import read_record
from .._artifacts import write_atomic as _write_atomic
from ._base import SectionResult, to_json
from ._html import render_html
from ._plot import style
from .config import ConfigError, dump_toml, load_config, resolve_config
from .data import data_fingerprint
from .sections import ORDER, module

__all__ = ["generate_report"]

# Bumped when a section's computation changes, so stale results on disk are not reused.
_FORMAT = 1


def _fingerprint(config: Mapping[str, Any], name: str) -> str:
    from .. import __version__

    digest = hashlib.sha256()
    settings = {k: v for k, v in config.items() if k != "sections"}
    digest.update(json.dumps([settings, name, __version__, _FORMAT], sort_keys=True, default=str).encode())
    digest.update(data_fingerprint(config).encode())
    return digest.hexdigest()


def _finished(directory: Path, name: str, fingerprint: str) -> SectionResult | None:
    """The result of a section already on disk for this very configuration, or None."""
    record = directory / "sections" / f"{name}.json"
    figures = [directory / "figures" / f"{name}.{ext}" for ext in ("png", "svg")]
    if not record.is_file() or not all(f.is_file() for f in figures):
        return None
    saved = read_record(record, fingerprint)
    return None if saved is None else SectionResult.from_json(saved)


def _check_device(config: Mapping[str, Any]) -> None:
    if config["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)"
        )


def generate_report(
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    out: str | os.PathLike = "ntkit-report",
    *,
    quick: bool = False,
    device: str | None = None,
    seed: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Run the NTK report and write it to ``out``; returns the path of report.html.

    Writes ``out``/report.html (self-contained), figures/*.png and *.svg, metrics.json (every number
    behind every figure), config.toml (the resolved configuration) and sections/*.json (finished sections:
    a rerun with the same configuration and data skips them, so an interrupted run resumes).

    Args:
        config: a TOML file, a dict in the same layout (see docs/report.md), or None for the built-in example.
        out: the output folder (created if needed).
        quick: the same sections at smaller sizes (under 30 s for the built-in example).
        device: "cpu" or "cuda", overriding the config.
        seed: the random seed, overriding the config.
        progress: show progress bars (None: only on a terminal).

    Raises:
        ConfigError (a ValueError): a bad configuration or data file, before any heavy work starts.
    """
    overrides = {"device": device, "seed": seed}
    if config is None or isinstance(config, (str, os.PathLike)):
        resolved = load_config(config, quick=quick, overrides=overrides)
    else:
        resolved = resolve_config(config, quick=quick, overrides=overrides)
    _check_device(resolved)
    from ._context import Context

    context = Context(resolved, progress=progress)  # loads and checks the data: fails here, before heavy work
    directory = Path(out)
    (directory / "figures").mkdir(parents=True, exist_ok=True)
    (directory / "sections").mkdir(parents=True, exist_ok=True)
    config_toml = dump_toml(resolved)
    _write_atomic(directory / "config.toml", config_toml)

    names = [name for name in ORDER if name in resolved["sections"]]
    results: list[SectionResult] = []
    reused: list[str] = []
    start = time.perf_counter()
    bar = tqdm(names, desc="report", unit="section", disable=None if progress is None else not progress)
    for name in bar:
        bar.set_postfix_str(name)
        fingerprint = _fingerprint(resolved, name)
        result = _finished(directory, name, fingerprint)
        if result is not None:
            reused.append(name)
            results.append(result)
            continue
        began = time.perf_counter()
        with style(), torch.random.fork_rng(devices=[]), _one_cpu_thread(context.device):
            torch.manual_seed(resolved["seed"])
            result = module(name).run(context, directory / "figures")
        result.seconds = time.perf_counter() - began
        record = {"fingerprint": fingerprint, "result": result.as_json()}
        _write_atomic(directory / "sections" / f"{name}.json", json.dumps(record, allow_nan=False))
        results.append(result)
        tqdm.write(f"  {result.title} ({result.seconds:.1f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - start

    from .. import __version__

    checks = [{"section": r.name, **to_json(c.__dict__)} for r in results for c in r.checks]
    metrics = {
        "ntkit_version": __version__,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": elapsed,
        "reused_sections": reused,
        "data": context.data.description,
        "checks": checks,
        "sections": {
            r.name: {"title": r.title, "caption": r.caption, "seconds": r.seconds, **r.metrics}
            for r in results
        },
        "config": resolved,
    }
    _write_atomic(directory / "metrics.json", json.dumps(to_json(metrics), indent=1, allow_nan=False))
    model = resolved["model"]
    meta = [
        f"Data: {context.data.description}.",
        f"Network: {model['depth']} hidden layers of width {model['width']}, {model['activation']}, "
        f"{model['parametrization']} parametrization, w_std = {model['w_std']:.4g}, b_std = "
        f"{model['b_std']:.4g}; full-batch gradient descent on the mean squared loss, {resolved['dtype']} on "
        f"{resolved['device']}.",
        f"Generated by ntkit {__version__} on {metrics['generated']} in {elapsed:.0f} s"
        + (f"; {len(reused)} section(s) reused from an earlier run." if reused else "."),
    ]
    page = render_html(
        title="ntkit report: the NTK theory on real training",
        meta=meta,
        sections=results,
        figures=directory / "figures",
        config_toml=config_toml,
    )
    _write_atomic(directory / "report.html", page)
    return directory / "report.html"
