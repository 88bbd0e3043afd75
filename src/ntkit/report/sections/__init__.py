"""The report's sections, in order; each module has TITLE and run(ctx, figures) -> SectionResult."""

from __future__ import annotations

import importlib
from types import ModuleType

ORDER = ("kernel", "training", "spectrum", "labels", "width", "features", "digits", "conv")


def module(name: str) -> ModuleType:
    """The module of section ``name`` (imported on first use: digits and conv need scikit-learn, others do not)."""
    if name not in ORDER:
        raise ValueError(f"unknown report section {name!r}; known: {', '.join(ORDER)}")
    return importlib.import_module(f".{name}", __name__)
