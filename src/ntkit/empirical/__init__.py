"""Empirical NTK of any torch.nn.Module: Jacobian contraction, NTK-vector products, layerwise, auto.

`empirical_ntk(model, x1, x2)` returns T_ab(x, x') = <df_a(x)/dtheta, df_b(x')/dtheta> (Jacot et al. 2018) by
one of three exact methods (Novak et al. 2022, "Fast finite width neural tangent kernel"), chosen
automatically from the model's structure and sizes unless `method=` says otherwise. `empirical_nngp(model, x1,
x2)` is its NNGP twin: the output covariance one network at initialisation estimates.
"""

from ._api import METHODS, OUTPUTS, empirical_ntk
from ._batching import DEFAULT_EMPIRICAL_BUDGET
from ._checks import check_modes
from .nngp import empirical_nngp

__all__ = ["DEFAULT_EMPIRICAL_BUDGET", "METHODS", "OUTPUTS", "check_modes", "empirical_nngp", "empirical_ntk"]
