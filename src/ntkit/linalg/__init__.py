"""Kernel linear algebra at scale: kernel operators computed block by block, and the solvers that use them.

- operators: `ArchKernel` (an architecture's exact NNGP/NTK), `EmpiricalKernel` (a model's empirical NTK),
  `DenseKernel` (a matrix in memory), `DaskKernel` (a dask array, e.g. from `ntkit.distributed.kernel`);
  products, columns and diagonals within a memory budget, blocks cached while they fit;
- `solve(kernel, y, diag_reg=..., method="auto" | "cholesky" | "eigh" | "cg" | "nystrom")`: kernel regression
  coefficients, with the route taken reported on the returned `Solution`; `training_weights` the (n, m)
  weights of the training labels in m test predictions (for posterior covariances), by the same route;
- `conjugate_gradients` with `LowRankPreconditioner` (Nystrom or pivoted-Cholesky factors); non-convergence
  raises `ConvergenceError` (or warns with `ConvergenceWarning`), stating the residual reached.
"""

from .cg import (
    CGResult,
    ConvergenceError,
    ConvergenceWarning,
    LowRankPreconditioner,
    conjugate_gradients,
    nystrom_factor,
    pivoted_cholesky,
)
from .operators import ArchKernel, DaskKernel, DenseKernel, EmpiricalKernel, KernelOperator, as_operator
from .solve import DENSE_MAX_N, METHODS, Solution, dense_fits, solve, training_weights

__all__ = [
    "DENSE_MAX_N",
    "METHODS",
    "ArchKernel",
    "CGResult",
    "ConvergenceError",
    "ConvergenceWarning",
    "DaskKernel",
    "DenseKernel",
    "EmpiricalKernel",
    "KernelOperator",
    "LowRankPreconditioner",
    "Solution",
    "as_operator",
    "conjugate_gradients",
    "dense_fits",
    "nystrom_factor",
    "pivoted_cholesky",
    "solve",
    "training_weights",
]
