"""Training of finite models: real gradient descent (`train`) and the linearized model (`linearize`).

The closed-form predictors live in (and are imported from) `ntkit.predict`; the implementation modules here
(closed_form, ensemble, ode) are theirs. The old spellings `ntkit.dynamics.gradient_descent_mse` etc. still work
for one release, with a DeprecationWarning.
"""

import importlib
from typing import Any

from .._warnings import moved_attribute
from .linearize import LinearizedModel, linearize
from .training import TrainingResult, train

__all__ = ["LinearizedModel", "TrainingResult", "linearize", "train"]


def __getattr__(name: str) -> Any:
    # The predictors moved to ntkit.predict, which re-exports exactly the __all__ of these modules (asked here
    # rather than ntkit.predict, which imports this package: the dependency runs one way). importlib, not
    # `from . import`, which would ask this function for a submodule that is still loading.
    modules = [importlib.import_module(f"{__name__}.{m}") for m in ("closed_form", "ensemble", "ode")]
    if any(name in module.__all__ for module in modules):
        return moved_attribute(__name__, name, "ntkit.predict")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
