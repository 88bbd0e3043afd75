"""Training dynamics: closed-form MSE predictions, infinite ensembles, linearized models and real training."""

from .closed_form import MSEPredictor, gradient_descent_mse, max_learning_rate
from .ensemble import (
    EnsemblePrediction,
    EnsemblePredictor,
    Gaussian,
    gp_inference,
    gradient_descent_mse_ensemble,
)
from .linearize import LinearizedModel, linearize
from .ode import ODEPredictor, gradient_descent
from .training import TrainingResult, train

__all__ = [
    "EnsemblePrediction",
    "EnsemblePredictor",
    "Gaussian",
    "LinearizedModel",
    "MSEPredictor",
    "ODEPredictor",
    "TrainingResult",
    "gp_inference",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "linearize",
    "max_learning_rate",
    "train",
]
