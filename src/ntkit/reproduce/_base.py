"""What an experiment returns, and the run it gets: settings, device, figures folder, resumable pieces."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._artifacts import Check, read_record, to_json, write_record

__all__ = ["Check", "Comparison", "Outcome", "Run", "fit_slope", "within"]

# Bumped when an experiment's computation changes, so records of an older computation are not reused.
FORMAT = 1


@dataclass
class Comparison:
    """One number of the paper beside ours (as text: the paper's may be a qualitative statement)."""

    quantity: str
    paper: str
    ours: str
    note: str = ""


@dataclass
class Outcome:
    """What an experiment measured: figures (written by it, name -> caption), numbers, checks, comparisons."""

    summary: str  # what was run and what came out, a paragraph for the page
    figures: dict[str, str]
    metrics: dict[str, Any]
    checks: list[Check]
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)  # e.g. a dataset replaced, a size reduced


class Run:
    """One run of an experiment: its settings, device, folders, and resumable pieces of work.

    ``piece(key, compute)`` returns what ``compute()`` returns (JSON-ready: numbers, lists, dicts), kept in
    ``records/<key>.json`` under a fingerprint of the experiment, its settings, the key and ntkit's version, so
    an interrupted run recomputes only the pieces it had not finished.
    """

    def __init__(
        self,
        name: str,
        settings: dict[str, Any],
        directory: Path,
        *,
        quick: bool,
        device: torch.device,
        progress: bool | None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.directory = directory
        self.figures = directory / "figures"
        self.quick = quick
        self.device = device
        self.progress = progress
        self.reused: list[str] = []
        self.computed: list[str] = []

    def fingerprint(self, key: str) -> str:
        from .. import __version__

        payload = [self.name, self.settings, key, __version__, FORMAT]
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def piece(self, key: str, compute: Callable[[], Any]) -> Any:
        path = self.directory / "records" / f"{key}.json"
        fingerprint = self.fingerprint(key)
        saved = read_record(path, fingerprint)
        if saved is not None:
            self.reused.append(key)
            return saved
        result = to_json(compute())
        write_record(path, fingerprint, result)
        self.computed.append(key)
        return result

    def per_width(
        self, widths: Sequence[int], seeds: int, compute: Callable[[int, int], Any]
    ) -> dict[int, list[Any]]:
        """``compute(width, seed)`` for every width and seed in range(seeds), each the piece ``width{w}-seed{s}``."""
        return {
            w: [
                self.piece(f"width{w}-seed{seed}", lambda w=w, seed=seed: compute(w, seed))
                for seed in range(seeds)
            ]
            for w in widths
        }

    def tensor(self, values: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype, device=self.device)


def fit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x) (positive finite values only; NaN with fewer than two)."""
    from ..analysis import fit_power_law

    slope, _ = fit_power_law(list(x), list(y))
    return slope


def within(value: float, low: float, high: float) -> bool:
    """low <= value <= high, False for NaN."""
    return math.isfinite(value) and low <= value <= high
