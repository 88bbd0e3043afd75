"""The t = inf closed forms without an eigendecomposition: kernel solves by ntkit.linalg when eigh does not fit.

solver="auto" keeps the eigendecomposition (any t) whenever it fits in memory; otherwise t = inf (kernel
regression, the GP posteriors) is computed by `ntkit.linalg.solve` ("cholesky" when one more n x n factor fits,
else preconditioned CG on a kernel operator). The route taken is recorded on the result and logged.
"""

from __future__ import annotations

import logging

import torch

from .. import linalg
from .._validation import check_choice

SOLVERS = ("auto", "eigh", "cholesky", "cg")
_EIGH_COPIES = 3.0  # the kernel, its eigenvectors and LAPACK's workspace, in n x n matrices
log = logging.getLogger("ntkit")


def choose(solver: str, n: int, dtype: torch.dtype, device: torch.device, unformed: int, what: str) -> str:
    """The route for `solver` on an n x n kernel, with `unformed` n x n kernels still to be computed."""
    check_choice(solver, "solver", SOLVERS)
    if solver != "auto":
        return solver
    extra = float(unformed)
    if linalg.dense_fits(n, dtype, device, _EIGH_COPIES - 1.0 + extra):
        return "eigh"
    route = "cholesky" if linalg.dense_fits(n, dtype, device, 1.0 + extra) else "cg"
    log.info(
        "%s: the eigendecomposition of the %d x %d kernel does not fit in memory; using %s", what, n, n, route
    )
    return route


def require_infinite(times: torch.Tensor, solver: str) -> None:
    if bool(torch.isfinite(times).any()):
        raise ValueError(
            f"finite t needs the eigendecomposition of the training kernel, but this predictor uses "
            f"solver={solver!r} (the dense eigendecomposition does not fit in memory, or another solver was asked "
            "for): predict at t=None / inf, or pass solver='eigh' with a kernel that fits"
        )


def solve(kernel: object, rhs: torch.Tensor, diag_reg: float, solver: str) -> torch.Tensor:
    """(K + diag_reg * trace(K)/n I)^-1 rhs by `solver` ("cholesky" or "cg")."""
    return linalg.solve(kernel, rhs, diag_reg=diag_reg, method=solver).coef


def moments(
    solve_train: object,
    cross_train: torch.Tensor | linalg.KernelOperator,
    y: torch.Tensor,
    cross_nngp: torch.Tensor | None,
    k_train_nngp: object,
    k_test_test: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean A y and covariance K_xx + A K A^T - A K_Xx - K_xX A^T with A = C T^-1 (t = inf, E = I).

    `solve_train(rhs)` applies T^-1 (regularised); `cross_train` is C = T(x, X) (matrix or operator);
    `k_train_nngp` is K(X, X) as a matrix or operator.
    """
    coef = solve_train(y)
    mean = cross_train.matmul(coef) if isinstance(cross_train, linalg.KernelOperator) else cross_train @ coef
    if k_test_test is None or cross_nngp is None:
        return mean, None
    c = cross_train.to_dense() if isinstance(cross_train, linalg.KernelOperator) else cross_train
    g = solve_train(c.T.contiguous())  # T^-1 C^T, (n, m)
    kg = k_train_nngp.matmul(g) if isinstance(k_train_nngp, linalg.KernelOperator) else k_train_nngp @ g
    ak = g.T @ cross_nngp.T  # A K(X, x'), (m, m)
    cov = k_test_test + g.T @ kg - ak - ak.T
    return mean, (cov + cov.T) / 2
