"""What a report section returns, and small helpers the sections share (JSON-ready numbers, checks)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Check", "SectionResult", "log_spaced_indices", "to_json"]


@dataclass
class Check:
    """A prediction of the theory tested on the measured numbers, shown in the report's summary table."""

    name: str
    statement: str  # what the theory predicts, in words
    measured: str  # what was measured, in words and numbers
    passed: bool


@dataclass
class SectionResult:
    """One report section: its figure (written by the section), caption, metrics and checks."""

    name: str
    title: str
    caption: str
    metrics: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    highlights: list[tuple[str, str]] = field(default_factory=list)  # (label, value) pairs for the key table
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = to_json(self.metrics)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SectionResult:
        checks = [Check(**c) for c in data.get("checks", [])]
        highlights = [tuple(h) for h in data.get("highlights", [])]
        return cls(
            data["name"],
            data["title"],
            data["caption"],
            data["metrics"],
            checks,
            highlights,
            data.get("seconds", 0.0),
        )


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


def log_spaced_indices(count: int, keep: int) -> list[int]:
    """About ``keep`` indices into 0..count-1, evenly spaced in log(1 + index), first and last included."""
    if count <= keep:
        return list(range(count))
    raw = np.unique(np.round(np.expm1(np.linspace(0.0, math.log(count), keep))).astype(int))
    indices = sorted({0, count - 1, *[int(i) for i in raw if 0 <= i < count]})
    return indices
