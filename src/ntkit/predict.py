"""Closed-form predictions of gradient-descent training from kernels: the one home of ntkit's predictors.

Implemented in ntkit.dynamics' closed_form, ensemble and ode modules (Lee et al. 2019, "Wide neural networks
of any depth evolve as linear models under gradient descent"; Jacot et al. 2018):
- `gradient_descent_mse`: a network's outputs under squared-loss gradient descent at any time, given its NTK;
- `gradient_descent_mse_ensemble`: mean and covariance over initialisations of infinitely wide networks;
- `gp_inference`: the NNGP and NTK-GP posteriors (t = inf);
- `max_learning_rate`: the largest stable rate of discrete gradient descent;
- `gradient_descent`: any differentiable loss (e.g. cross-entropy), by integrating the function-space ODE.
"""

from .dynamics.closed_form import MSEPredictor, gradient_descent_mse, max_learning_rate
from .dynamics.ensemble import (
    EnsemblePrediction,
    EnsemblePredictor,
    Gaussian,
    gp_inference,
    gradient_descent_mse_ensemble,
)
from .dynamics.ode import ODEPredictor, gradient_descent

__all__ = [
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
]
