"""Kernel regression solves: (K + shift I) alpha = y by Cholesky, eigendecomposition, CG, or Nystrom/Falkon.

shift = diag_reg * trace(K) / n (ntkit's convention: diag_reg is relative to the mean diagonal). Routes:

- "cholesky": K + shift I = L L^T, then two triangular solves (needs the dense K and its factor: 2 n^2 numbers);
- "eigh": K + shift I = V diag(lam) V^T; eigenvalues at round-off level (<= n eps lam_max) are treated as 0 (the
  pseudo-inverse, so a singular K without diag_reg still has the minimum-norm answer);
- "cg": preconditioned conjugate gradients on a `KernelOperator` (never forms K; `cg.py`);
- "nystrom": Nystrom kernel regression with M centres S (Rudi et al. 2017, "FALKON"; Meanti et al. 2020):
  f(x) = K(x, S) beta with beta = argmin ||K_nM beta - y||^2 + shift beta^T K_MM beta, i.e.
  (K_nM^T K_nM + shift K_MM) beta = K_nM^T y, solved by CG with FALKON's preconditioner. Memory O(n M): K_nM is
  kept if it fits (else recomputed block by block each iteration). With M = n it is exact kernel regression.
- "auto": Cholesky when the dense route fits in memory (and n <= `DENSE_MAX_N`), otherwise CG.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import tiling
from .._validation import (
    Array,
    as_float_tensor,
    check_choice,
    check_int,
    check_kernel,
    check_labels,
    check_real,
)
from .cg import build_preconditioner, conjugate_gradients, default_tol
from .operators import DenseKernel, KernelOperator, as_operator

if TYPE_CHECKING:
    import dask.array

__all__ = ["DENSE_MAX_N", "METHODS", "Solution", "dense_fits", "solve", "training_weights"]

METHODS = ("auto", "cholesky", "eigh", "cg", "nystrom")
DENSE_MAX_N = 20_000
"""Largest n for which solver="auto" takes the dense route (a Cholesky of n = 20,000 is ~2.7e12 flops; CG on a
cached kernel needs ~100 products of 2 n^2 flops each beyond that)."""


@dataclass(frozen=True)
class Solution:
    """The coefficients of a kernel regression: predictions are K(x, X[support]) @ coef.

    Attributes: `coef` ((n, k) or (n,) like y; (M, ...) on the centres for "nystrom"), `support` (None: all
    training points; else the centre indices), `method` (the route taken), `shift` (the absolute diagonal
    regularisation), `iterations` and `residual` (CG's relative residual; 0 and None for dense routes),
    `preconditioner` and `rank` (CG's, so `training_weights` solves with the same ones).
    """

    coef: torch.Tensor
    support: torch.Tensor | None
    method: str
    shift: float
    iterations: int = 0
    residual: float | None = None
    preconditioner: str | None = None
    rank: int | None = None

    @property
    def alpha(self) -> torch.Tensor:
        """Coefficients on every training point (zero off the support): K(x, X) @ alpha is the prediction."""
        if self.support is None:
            return self.coef
        raise ValueError("a Nystrom solution has coefficients on its centres only: use .coef with .support")

    def predict(self, k_test_train: KernelOperator | Array) -> torch.Tensor:
        """K(x_test, X) @ coef for a (m, n) matrix or `KernelOperator` between test and training points."""
        if isinstance(k_test_train, KernelOperator):
            if self.support is None:
                return k_test_train.matmul(self.coef)
            return k_test_train.columns(self.support) @ self.coef
        k = as_float_tensor(k_test_train, "k_test_train", ndim=2).to(self.coef.device, self.coef.dtype)
        if self.support is not None:
            k = k[:, self.support.to(k.device)]
        return k @ self.coef


def dense_fits(n: int, dtype: torch.dtype, device: torch.device, copies: float = 2.0) -> bool:
    """Whether `copies` n x n matrices of `dtype` fit in half of the memory free on `device` now."""
    free = tiling.available_memory(device)
    if free is None:
        return True
    return copies * n * n * dtype.itemsize <= 0.5 * free


def _labels(y: Array, n: int, like: KernelOperator) -> tuple[torch.Tensor, bool]:
    y = check_labels(y, n, "y", against="the kernel").to(dtype=like.dtype, device=like.device)
    return (y[:, None] if y.ndim == 1 else y), y.ndim == 1


def solve(
    kernel: KernelOperator | Array | dask.array.Array,
    y: Array,
    *,
    diag_reg: float = 0.0,
    method: str = "auto",
    tol: float | None = None,
    max_iter: int | None = None,
    preconditioner: str | None = "nystrom",
    rank: int | None = None,
    n_centers: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    on_nonconvergence: str = "raise",
) -> Solution:
    """Solve (K + diag_reg * trace(K)/n * I) alpha = y by the route `method` (see the module docstring).

    Args:
        kernel: a `KernelOperator` (`ArchKernel`, `EmpiricalKernel`, `DenseKernel`, a Dask kernel) or an
            (n, n) matrix (tensor or numpy array).
        y: (n,) or (n, k) targets; the result takes the kernel's dtype and device.
        diag_reg: regularisation relative to the mean diagonal (>= 0).
        method: "auto", "cholesky", "eigh", "cg" or "nystrom".
        tol: CG's relative residual (default 1e-8 in float64, 1e-4 in float32); max_iter its iteration cap.
        preconditioner: CG's "nystrom" (default), "pivoted-cholesky" or None; rank its M (default
            min(n, max(100, 2 sqrt(n)))).
        n_centers: M for method="nystrom" (default min(n, 1000)); centres drawn uniformly with `seed`.
        progress: CG's progress bar (None: only on a terminal).
        on_nonconvergence: "raise" (ConvergenceError) or "warn" (ConvergenceWarning) when CG stops short of tol.
    """
    check_choice(method, "method", METHODS)
    if isinstance(kernel, (torch.Tensor, np.ndarray)):  # the check of every K(X, X) in ntkit
        kernel = check_kernel(kernel, "kernel")
    op = as_operator(kernel, "kernel")
    n = op.shape[0]
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"kernel must be square (the training kernel K(X, X)), got shape {op.shape}")
    diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
    seed = check_int(seed, "seed", minimum=0)
    y2, was_1d = _labels(y, n, op)
    diagonal = _check_diagonal(op)
    shift = diag_reg * float(diagonal.sum()) / n if diag_reg else 0.0
    if method == "auto":
        copies = (
            1.0 if isinstance(op, DenseKernel) else 2.0
        )  # the factor (and the kernel, when not yet formed)
        method = "cholesky" if n <= DENSE_MAX_N and dense_fits(n, op.dtype, op.device, copies) else "cg"
    generator = torch.Generator().manual_seed(seed)
    if method in ("cholesky", "eigh"):
        k = op.to_dense()
        coef = _cholesky(k, y2, shift) if method == "cholesky" else _eigh(k, y2, shift)
        return Solution(coef[:, 0] if was_1d else coef, None, method, shift)
    if method == "cg":
        rank = min(n, max(100, int(2 * math.sqrt(n)))) if rank is None else check_int(rank, "rank", minimum=0)
        pre = build_preconditioner(op, preconditioner, rank, shift, generator)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            out = op.matmul(v)
            return out + shift * v if shift else out

        result = conjugate_gradients(
            matvec, y2, precondition=pre, tol=tol, max_iter=max_iter, progress=progress,
            on_nonconvergence=on_nonconvergence, what="K + shift I",
        )  # fmt: skip
        coef = result.x
        return Solution(
            coef[:, 0] if was_1d else coef, None, "cg", shift, result.iterations, result.residual,
            preconditioner, rank,
        )  # fmt: skip
    m = min(n, 1000) if n_centers is None else check_int(n_centers, "n_centers", minimum=1)
    if m > n:
        raise ValueError(f"n_centers={m} exceeds the number of training points {n}")
    centers = torch.randperm(n, generator=generator)[:m].sort().values
    system = _Falkon(op, centers, shift)
    coef, iterations, residual = system.solve(system.knm.transpose_product(y2), tol, max_iter, progress,
                                              on_nonconvergence)  # fmt: skip
    return Solution(coef[:, 0] if was_1d else coef, centers, "nystrom", shift, iterations, residual)


def training_weights(
    kernel: KernelOperator | Array | dask.array.Array,
    solution: Solution,
    k_test_train: Array,
    *,
    tol: float | None = None,
    max_iter: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    on_nonconvergence: str = "raise",
) -> torch.Tensor:
    """W (n, m) with `solution`'s test predictions = W^T y: the weight of every training label in each of them.

    The predictions of every route are linear in y, f(x) = A(x) y, and W = A^T. Cholesky, eigh and CG (same
    preconditioner kind and rank, drawn with `seed`): W = (K + shift I)^+ K(X, x). Nystrom with centres S:
    W = K_nS (K_nS^T K_nS + shift K_SS)^-1 K(S, x), by CG with FALKON's preconditioner; by the push-through
    identity this is (K~ + shift I)^-1 K~(X, x) for the Nystrom kernel K~ = K_nS K_SS^-1 K_Sn, so it is the
    exact W when S is every point. What needs W: the posterior covariance of an ensemble,
    K(x, x') + W^T K W - W^T K(X, x') - K(x, X) W (Lee et al. 2019, eq. 16 at t = inf), and leave-out analyses.

    Args:
        kernel: the training kernel K(X, X) that `solution` was solved with (operator or matrix).
        solution: what `solve` returned for it.
        k_test_train: K(x, X), (m, n), a matrix (the columns on the centres are used for "nystrom").
        tol, max_iter, progress, on_nonconvergence: as in `solve`, for the CG routes; the m right-hand sides
            are solved together in batches that keep CG's five (n, batch) vectors within the operator's
            memory budget.
    """
    if not isinstance(solution, Solution):
        raise TypeError(
            f"solution must be an ntkit.linalg.Solution (from solve), got {type(solution).__name__}"
        )
    op = as_operator(kernel, "kernel")
    n = op.shape[0]
    c = as_float_tensor(k_test_train, "k_test_train", ndim=2).to(dtype=op.dtype, device=op.device)
    if c.shape[1] != n or op.shape[0] != op.shape[1]:
        raise ValueError(
            f"k_test_train must have shape (m, {n}) against the {op.shape[0]} x {op.shape[1]} training kernel, got "
            f"{tuple(c.shape)}"
        )
    _check_diagonal(op)
    m = c.shape[0]
    out = torch.empty((n, m), dtype=op.dtype, device=op.device)
    batch = max(1, min(m, op.memory_budget // (6 * n * op.dtype.itemsize)))
    if solution.method == "nystrom":
        system = _Falkon(op, solution.support, solution.shift)
        cs = c[:, solution.support.to(c.device)]
        for i in range(0, m, batch):
            beta, _, _ = system.solve(
                cs[i : i + batch].T.contiguous(), tol, max_iter, progress, on_nonconvergence
            )
            out[:, i : i + batch] = system.knm.product(beta)
        return out
    if solution.method in ("cholesky", "eigh"):
        k = op.to_dense()
        fn = _cholesky if solution.method == "cholesky" else _eigh
        for i in range(0, m, batch):
            out[:, i : i + batch] = fn(k, c[i : i + batch].T.contiguous(), solution.shift)
        return out
    if solution.method != "cg":
        raise ValueError(f"solution.method must be one of {METHODS[1:]}, got {solution.method!r}")
    rank = solution.rank if solution.rank is not None else min(n, max(100, int(2 * math.sqrt(n))))
    pre = build_preconditioner(op, solution.preconditioner, rank, solution.shift,
                               torch.Generator().manual_seed(check_int(seed, "seed", minimum=0)))  # fmt: skip
    shift = solution.shift

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return op.matmul(v) + shift * v if shift else op.matmul(v)

    for i in range(0, m, batch):
        result = conjugate_gradients(
            matvec, c[i : i + batch].T.contiguous(), precondition=pre, tol=tol, max_iter=max_iter,
            progress=progress, on_nonconvergence=on_nonconvergence, what="K + shift I (training weights)",
        )  # fmt: skip
        out[:, i : i + batch] = result.x
    return out


def _check_diagonal(op: KernelOperator) -> torch.Tensor:
    """The diagonal of K, refused when an entry is negative beyond rounding.

    Every PSD matrix has K_ii = e_i^T K e_i >= 0, and the diagonal costs O(n) entries, so this is the one
    PSD test that is cheap before the O(n^2) work; other indefinite kernels are caught by the route itself
    (Cholesky's failed pivot, CG's p^T A p <= 0, eigh's warning). The tolerance, 100 eps max|K_ii|, is far above
    the rounding of a kernel entry computed in `op.dtype` and far below any real negative diagonal.
    """
    diagonal = op.diagonal()
    if not bool(torch.isfinite(diagonal).all()):
        raise ValueError("kernel has NaN or infinite diagonal entries; check the inputs it was computed from")
    scale = float(diagonal.abs().max()) if diagonal.numel() else 0.0
    low = float(diagonal.min()) if diagonal.numel() else 0.0
    if low < -100 * torch.finfo(diagonal.dtype).eps * scale:
        i = int(diagonal.argmin())
        raise ValueError(
            f"kernel is not positive semi-definite: its diagonal entry K[{i}, {i}] = {low:.3g} is negative "
            f"(largest |K_ii| {scale:.3g}), which no PSD kernel has; check how the kernel was built"
        )
    return diagonal


def _cholesky(k: torch.Tensor, y: torch.Tensor, shift: float) -> torch.Tensor:
    a = k + shift * torch.eye(k.shape[0], dtype=k.dtype, device=k.device) if shift else k
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise ValueError(
            f"the kernel{' + shift I' if shift else ''} is not positive definite (Cholesky failed at column "
            f"{int(info)}): it is singular to working precision or not PSD; pass diag_reg > 0 (e.g. 1e-6), or "
            "solver='eigh' for the pseudo-inverse"
        )
    return torch.cholesky_solve(y, factor)


def _eigh(k: torch.Tensor, y: torch.Tensor, shift: float) -> torch.Tensor:
    n = k.shape[0]
    a = k + shift * torch.eye(n, dtype=k.dtype, device=k.device) if shift else k
    evals, evecs = torch.linalg.eigh(a)
    lam_max = float(evals[-1])
    if not lam_max > 0:
        raise ValueError(f"the kernel has no positive eigenvalue (largest {lam_max:.3g})")
    eps = torch.finfo(k.dtype).eps
    if float(evals[0]) < -math.sqrt(eps) * lam_max:
        warnings.warn(
            f"the kernel is not positive semi-definite: smallest eigenvalue {float(evals[0]):.3g} vs largest "
            f"{lam_max:.3g}; negative eigenvalues are treated as 0",
            RuntimeWarning,
            stacklevel=3,
        )
    null = evals <= n * eps * lam_max
    if bool(null.any()):
        warnings.warn(
            f"the kernel is singular to working precision ({int(null.sum())} of {n} eigenvalues below "
            f"{n * eps * lam_max:.3g}); using the pseudo-inverse. Pass diag_reg > 0 to regularise",
            RuntimeWarning,
            stacklevel=3,
        )
    inv = torch.where(null, torch.zeros_like(evals), 1.0 / torch.where(null, torch.ones_like(evals), evals))
    return evecs @ (inv[:, None] * (evecs.T @ y))


class _CrossToCenters:
    """K_nM = K[:, centers], kept whole when it fits in memory, else recomputed in row blocks per product."""

    def __init__(self, op: KernelOperator, centers: torch.Tensor) -> None:
        self.op = op
        self.centers = centers
        n, m = op.shape[0], centers.numel()
        self.rows = max(16, op.memory_budget // (4 * op.dtype.itemsize * m))
        free = tiling.available_memory(op.device)
        self.matrix = op.columns(centers) if free is None or n * m * op.dtype.itemsize <= 0.5 * free else None

    def gram_product(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K_nM^T K_nM v, ...) in one pass over the rows."""
        if self.matrix is not None:
            return self.matrix.T @ (self.matrix @ v)
        n = self.op.shape[0]
        out = torch.zeros_like(v)
        for i in range(0, n, self.rows):
            blk = self.op.block(slice(i, min(i + self.rows, n)), self.centers)
            out += blk.T @ (blk @ v)
        return out

    def transpose_product(self, y: torch.Tensor) -> torch.Tensor:
        if self.matrix is not None:
            return self.matrix.T @ y
        n = self.op.shape[0]
        out = torch.zeros((self.centers.numel(), y.shape[1]), dtype=y.dtype, device=y.device)
        for i in range(0, n, self.rows):
            rows = slice(i, min(i + self.rows, n))
            out += self.op.block(rows, self.centers).T @ y[rows]
        return out

    def product(self, beta: torch.Tensor) -> torch.Tensor:
        """K_nM @ beta, (n, k)."""
        if self.matrix is not None:
            return self.matrix @ beta
        n = self.op.shape[0]
        out = torch.empty((n, beta.shape[1]), dtype=beta.dtype, device=beta.device)
        for i in range(0, n, self.rows):
            rows = slice(i, min(i + self.rows, n))
            out[rows] = self.op.block(rows, self.centers) @ beta
        return out

    def centers_block(self) -> torch.Tensor:
        if self.matrix is not None:
            return self.matrix[self.centers.to(self.matrix.device)]
        return self.op.block(self.centers, self.centers)


class _Falkon:
    """The Nystrom system H beta = r, H = K_nM^T K_nM + shift K_MM, by CG with FALKON's preconditioner B = T^-1 A^-1.

    T^T T = K_MM (+ jitter), A^T A = (n / M) T T^T + shift I, so B^T H B ~ I when K_nM^T K_nM ~ (n/M) K_MM^2.
    """

    def __init__(self, op: KernelOperator, centers: torch.Tensor, shift: float) -> None:
        n, m = op.shape[0], centers.numel()
        self.op = op
        self.shift = shift
        self.knm = _CrossToCenters(op, centers)
        # Three M x M matrices are kept and at most one scratch matrix is alive beside them: at M = 5000 in float64
        # each is 0.2 GB, so the preconditioner stays small beside K_nM (n M entries).
        kmm = self.knm.centers_block()
        self.kmm = torch.add(kmm, kmm.T).mul_(0.5)
        del kmm
        jitter = m * torch.finfo(op.dtype).eps * float(torch.diagonal(self.kmm).mean())
        scratch = self.kmm.clone()
        scratch.diagonal().add_(jitter)
        self.t_up = _upper_cholesky(scratch, "K(centres, centres)")
        scratch = torch.mm(self.t_up, self.t_up.T).mul_(n / m)
        scratch.diagonal().add_(shift)
        self.a_up = _upper_cholesky(scratch, "the FALKON preconditioner")

    def _b(self, u: torch.Tensor) -> torch.Tensor:  # B u = T^-1 A^-1 u
        inner = torch.linalg.solve_triangular(self.a_up, u, upper=True)
        return torch.linalg.solve_triangular(self.t_up, inner, upper=True)

    def _bt(self, v: torch.Tensor) -> torch.Tensor:  # B^T v = A^-T T^-T v
        w = torch.linalg.solve_triangular(self.t_up.T, v, upper=False)
        return torch.linalg.solve_triangular(self.a_up.T, w, upper=False)

    def solve(
        self,
        rhs: torch.Tensor,
        tol: float | None,
        max_iter: int | None,
        progress: bool | None,
        on_nonconvergence: str,
    ) -> tuple[torch.Tensor, int, float]:
        """beta = H^-1 rhs for rhs (M, k), with CG's iterations and relative residual."""

        def matvec(u: torch.Tensor) -> torch.Tensor:
            beta = self._b(u)
            h = self.knm.gram_product(beta)
            if self.shift:
                h = h + self.shift * (self.kmm @ beta)
            return self._bt(h)

        result = conjugate_gradients(
            matvec, self._bt(rhs), tol=default_tol(self.op.dtype) if tol is None else tol, max_iter=max_iter,
            progress=progress, on_nonconvergence=on_nonconvergence, what="the preconditioned Nystrom system",
        )  # fmt: skip
        return self._b(result.x), result.iterations, result.residual


def _upper_cholesky(a: torch.Tensor, what: str) -> torch.Tensor:
    """The upper Cholesky factor of a symmetric `a`; LAPACK reads one triangle, so rounding asymmetry is moot."""
    factor, info = torch.linalg.cholesky_ex(a, upper=True)
    if int(info) != 0:
        raise ValueError(
            f"{what} is not positive definite (Cholesky failed at column {int(info)}): duplicated centres or a "
            "singular kernel; pass diag_reg > 0 or fewer n_centers"
        )
    return factor
