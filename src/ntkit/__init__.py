"""ntkit: Neural Tangent Kernels in PyTorch.

Exact infinite-width kernels (NNGP and NTK) of an architecture together with its finite-width twin, the empirical
NTK of any ``torch.nn.Module``, closed-form training dynamics, and the analyses the NTK theory makes possible.

Submodules load on first use, so ``import ntkit`` stays cheap (plotting and scikit-learn are only imported by the
parts that need them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_EXPORTS = {
    "mlp": ".layers",
    "Kernel": ".layers",
    "Serial": ".layers",
    "Dense": ".layers",
    "LayerError": ".layers",
    "MemoryBudgetError": ".tiling",
    "StoreError": ".tiling",
    "empirical_ntk": ".empirical",
    "empirical_nngp": ".empirical",
    "linearize": ".dynamics",
    "train": ".dynamics",
}
_SUBMODULES = ("layers", "empirical", "dynamics", "predict", "analysis", "report", "tiling")

__all__ = [
    "Dense",
    "Kernel",
    "LayerError",
    "MemoryBudgetError",
    "Serial",
    "StoreError",
    "__version__",
    "analysis",
    "dynamics",
    "empirical",
    "empirical_nngp",
    "empirical_ntk",
    "layers",
    "linearize",
    "mlp",
    "predict",
    "report",
    "tiling",
    "train",
]

if TYPE_CHECKING:
    from . import analysis, dynamics, empirical, layers, predict, report, tiling
    from .dynamics import linearize, train
    from .empirical import empirical_nngp, empirical_ntk
    from .layers import Dense, Kernel, LayerError, Serial, mlp
    from .tiling import MemoryBudgetError, StoreError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ntkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
