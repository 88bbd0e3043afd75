"""The report pipeline: check the config, run the sections (resuming finished ones), write the outputs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._artifacts import check_out_folder
from .._artifacts import one_cpu_thread as _one_cpu_thread
from .._artifacts import write_atomic as _write_atomic
from ._base import SectionResult, to_json
from ._html import render_html
from ._plot import style
from .config import ConfigError, dump_toml, load_config, resolve_config
from .data import data_fingerprint
from .sections import ORDER, module

__all__ = ["generate_report"]

# Bumped when a section's computation changes, so stale results on disk are not reused.
_FORMAT = 2  # 2: checks carry their threshold and the point where they are judged

# sections that train the report's network at training.learning_rate
_TRAINING_SECTIONS = ("training", "spectrum", "labels", "width")

# errors of the file system (not of the report's code) while writing into --out
_WRITE_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EEXIST,
}


@contextlib.contextmanager
def _writing_into(out: str | os.PathLike, directory: Path) -> Iterator[None]:
    """Turn a file-system error while writing the report into one line naming --out (no traceback)."""
    try:
        yield
    except OSError as err:
        inside = err.filename is not None and Path(err.filename).resolve().is_relative_to(directory.resolve())
        if not (inside or err.errno in _WRITE_ERRORS):
            raise
        where = f" {err.filename}" if err.filename is not None else ""
        raise ConfigError(f"--out {out}: cannot write{where}: {err.strerror or err}") from None


def _fingerprint(config: Mapping[str, Any], name: str) -> str:
    from .. import __version__

    digest = hashlib.sha256()
    settings = {k: v for k, v in config.items() if k != "sections"}
    digest.update(json.dumps([settings, name, __version__, _FORMAT], sort_keys=True, default=str).encode())
    digest.update(data_fingerprint(config).encode())
    return digest.hexdigest()


def _complete_figure(path: Path) -> bool:
    """Whether a figure file ends as a whole file of its format does (a PNG with its IEND chunk, an SVG with
    its closing tag): a file cut short by a full disk or a copy is a damaged record, not a finished one."""
    data = path.read_bytes()
    if path.suffix == ".png":
        return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    return data.rstrip().endswith(b"</svg>")


def _finished(directory: Path, name: str, fingerprint: str) -> tuple[SectionResult | None, str | None]:
    """The result of a section already on disk for this very configuration (or None), and why a record
    that is there cannot be reused (None when there is no record or it is reused).

    A damaged record (not JSON, cut short, not a section record, a figure missing or cut short) is only a
    cache of finished work: the section is computed again, and the reason is reported, not an error.
    """
    record = directory / "sections" / f"{name}.json"
    if not record.exists():
        return None, None
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return None, f"{record} is damaged (not valid JSON: {err.msg} at character {err.pos})"
    except UnicodeDecodeError:
        return None, f"{record} is damaged (not UTF-8 text)"
    except OSError as err:
        return None, f"{record} cannot be read ({err.strerror or err})"
    if not isinstance(saved, dict) or not {"fingerprint", "result"} <= saved.keys():
        return None, f"{record} is damaged (not a section record: no fingerprint and result)"
    if saved["fingerprint"] != fingerprint:
        return None, f"{record} was written for another configuration, data or ntkit version"
    try:
        result = SectionResult.from_json(saved["result"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return None, f"{record} is damaged (a section record without {err})"
    if result.name != name:
        return None, f"{record} is damaged (it holds section {result.name!r})"
    for ext in ("png", "svg"):
        figure = directory / "figures" / f"{name}.{ext}"
        if not figure.is_file():
            return None, f"its figure {figure} is missing"
        if not _complete_figure(figure):
            return None, f"its figure {figure} is damaged (cut short)"
    return result, None


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

    A record in ``out``/sections that is damaged (not valid JSON, cut short, a figure missing or cut short) is
    computed again with a notice on stderr, and the page and metrics.json ("recomputed_sections") say why.

    Raises:
        ConfigError (a ValueError): a bad configuration or data file, an ``out`` that is a file or not
            writable, or a learning rate at or above the stability limit 2 N / lambda_max of the analytic
            NTK, before any heavy work starts; a training run that diverges all the same, when it does.
    """
    overrides = {"device": device, "seed": seed}
    if config is None or isinstance(config, (str, os.PathLike)):
        resolved = load_config(config, quick=quick, overrides=overrides)
    else:
        resolved = resolve_config(config, quick=quick, overrides=overrides)
    _check_device(resolved)
    directory = check_out_folder(out)
    from ._context import Context

    context = Context(resolved, progress=progress)  # loads and checks the data: fails here, before heavy work
    names = [name for name in ORDER if name in resolved["sections"]]
    if any(name in _TRAINING_SECTIONS for name in names):
        _ = context.learning_rate  # a rate above the stability limit stops here, before any training
    with _writing_into(out, directory):
        (directory / "figures").mkdir(parents=True, exist_ok=True)
        (directory / "sections").mkdir(parents=True, exist_ok=True)
        config_toml = dump_toml(resolved)
        _write_atomic(directory / "config.toml", config_toml)
        start = time.perf_counter()
        results, reused, recomputed = _run_sections(context, resolved, names, directory, progress)
        elapsed = time.perf_counter() - start
        page = _write_outputs(context, resolved, results, reused, recomputed, directory, config_toml, elapsed)
    return page


def _built_in_note(context: Any, name: str) -> list[str]:
    """For sections that do not use the user's data, a note saying which data they use instead."""
    built_in = getattr(module(name), "BUILT_IN_DATA", None)
    if built_in is None or context.config["data"]["source"] != "files":
        return []
    data = context.config["data"]
    key = "train" if data["train"] is not None else "x_train"
    return [
        f"This section uses built-in data, {built_in}, not the data of your configuration (data.{key} = "
        f"{data[key]}): it shows the theory where the answer is known."
    ]


def _run_sections(
    context: Any, resolved: dict[str, Any], names: list[str], directory: Path, progress: bool | None
) -> tuple[list[SectionResult], list[str], dict[str, str]]:
    """Run (or reuse) each section; returns the results, the names reused, and why records were not."""
    results: list[SectionResult] = []
    reused: list[str] = []
    recomputed: dict[str, str] = {}
    bar = tqdm(names, desc="report", unit="section", disable=None if progress is None else not progress)
    for name in bar:
        bar.set_postfix_str(name)
        fingerprint = _fingerprint(resolved, name)
        result, why_not = _finished(directory, name, fingerprint)
        if result is not None:
            reused.append(name)
            result.notes = _built_in_note(context, name)
            results.append(result)
            tqdm.write(
                f"  {result.title} (reused from {directory / 'sections' / name}.json)", file=sys.stderr
            )
            continue
        if why_not is not None:
            recomputed[name] = why_not
            tqdm.write(f"ntkit report: {why_not}: computing section {name!r} again", file=sys.stderr)
        began = time.perf_counter()
        with style(), torch.random.fork_rng(devices=[]), _one_cpu_thread(context.device):
            torch.manual_seed(resolved["seed"])
            result = module(name).run(context, directory / "figures")
        result.seconds = time.perf_counter() - began
        result.notes = _built_in_note(context, name)
        record = {"fingerprint": fingerprint, "result": result.as_json()}
        _write_atomic(directory / "sections" / f"{name}.json", json.dumps(record, allow_nan=False))
        results.append(result)
        tqdm.write(f"  {result.title} ({result.seconds:.1f} s)", file=sys.stderr)
    if reused:
        tqdm.write(
            f"ntkit report: reused {len(reused)} of {len(names)} section(s) finished by an earlier run "
            f"({', '.join(reused)}); delete {directory / 'sections'} to compute them again",
            file=sys.stderr,
        )
    return results, reused, recomputed


def _write_outputs(
    context: Any,
    resolved: dict[str, Any],
    results: list[SectionResult],
    reused: list[str],
    recomputed: dict[str, str],
    directory: Path,
    config_toml: str,
    elapsed: float,
) -> Path:
    """metrics.json and report.html from the sections' results; returns the page's path."""

    from .. import __version__

    checks = [{"section": r.name, **to_json(c.__dict__)} for r in results for c in r.checks]
    metrics = {
        "ntkit_version": __version__,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": elapsed,
        "reused_sections": reused,
        "recomputed_sections": recomputed,
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
        + (
            f"; {len(reused)} of {len(results)} sections reused from an earlier run ({', '.join(reused)})."
            if reused
            else "."
        )
        + (
            f" Computed again: {'; '.join(f'{k} ({v})' for k, v in recomputed.items())}."
            if recomputed
            else ""
        ),
    ]
    built_in = [r.title.split(". ", 1)[0] for r in results if r.notes]
    if built_in:
        meta.append(
            f"Section(s) {', '.join(built_in)} use built-in data, not yours (each says which); the others use "
            "your data."
        )
    page = render_html(
        title="ntkit report: the NTK theory on real training",
        meta=meta,
        sections=results,
        figures=directory / "figures",
        config_toml=config_toml,
        reused=reused,
    )
    _write_atomic(directory / "report.html", page)
    return directory / "report.html"
