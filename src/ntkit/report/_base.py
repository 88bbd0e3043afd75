"""What a report section returns, and small helpers the sections share (JSON-ready numbers, checks)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._artifacts import Check as _ArtifactCheck
from .._artifacts import to_json

__all__ = ["Check", "SectionResult", "log_spaced_indices", "to_json"]


@dataclass
class Check(_ArtifactCheck):
    """A prediction tested on the run, with what the summary table needs to be read without the caption.

    ``threshold`` is the condition that counts as held ("RMS gap < 0.1 of RMS(y)"), ``judged_at`` the point
    where it is judged ("step 96, when the predicted loss has fallen tenfold"), and ``later`` is set when the
    same condition, applied later in the run, gives a different answer ("no after all 400 steps: 0.163"):
    a prediction that holds early and fails late is shown as such, not as a bare "yes".
    """

    threshold: str = ""
    judged_at: str = ""
    later: str = ""


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
    notes: list[str] = field(default_factory=list)  # shown above the figure (set by the pipeline)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = to_json(self.metrics)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SectionResult:
        checks = [Check(**c) for c in data["checks"]]
        highlights = [tuple(h) for h in data.get("highlights", [])]
        return cls(
            data["name"],
            data["title"],
            data["caption"],
            data["metrics"],
            checks,
            highlights,
            data["seconds"],
        )


def log_spaced_indices(count: int, keep: int) -> list[int]:
    """About ``keep`` indices into 0..count-1, evenly spaced in log(1 + index), first and last included."""
    if count <= keep:
        return list(range(count))
    raw = np.unique(np.round(np.expm1(np.linspace(0.0, math.log(count), keep))).astype(int))
    indices = sorted({0, count - 1, *[int(i) for i in raw if 0 <= i < count]})
    return indices
