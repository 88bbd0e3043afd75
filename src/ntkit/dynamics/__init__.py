"""Training of finite models: real gradient descent (`train`) and the linearized model (`linearize`).

The closed-form predictors live in (and are imported from) `ntkit.predict`; the implementation modules here
(closed_form, ensemble, ode) are theirs. The old spellings `ntkit.dynamics.gradient_descent_mse` etc. still work
for one release, with a DeprecationWarning.
"""

from typing import Any

from .._warnings import moved_attribute
from .linearize import LinearizedModel, linearize
from .training import TrainingResult, train

__all__ = ["LinearizedModel", "TrainingResult", "linearize", "train"]


def __getattr__(name: str) -> Any:
    from .. import predict  # the predictors' one home; imported here, when an old spelling is used

    if name in predict.__all__:
        return moved_attribute(__name__, name, "ntkit.predict")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
