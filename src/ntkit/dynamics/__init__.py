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

# The names that moved to ntkit.predict (its __all__; tests/test_deprecations.py keeps the two equal). Listed here
# rather than read from ntkit.predict, which imports this package's modules: the dependency runs one way.
_MOVED_TO_PREDICT = frozenset(
    {
        "EnsemblePrediction",
        "EnsemblePredictor",
        "Gaussian",
        "MSEPredictor",
        "ODEPredictor",
        "gp_inference",
        "gradient_descent",
        "gradient_descent_mse",
        "gradient_descent_mse_ensemble",
        "max_learning_rate",
    }
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_PREDICT:
        return moved_attribute(__name__, name, "ntkit.predict")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
