"""Preconditioned conjugate gradients for (K + shift I) x = b, with Nystrom or pivoted-Cholesky preconditioners.

CG needs only products with K (a `KernelOperator`), so K is never formed. Each column of b is its own CG run,
all advanced together by one block product per iteration. Convergence is judged on the TRUE relative residual
||b - (K + shift I) x|| / ||b|| of every column (recomputed with one extra product whenever the recurrence says
converged, restarting from there if round-off made them differ), so a reported solution has the residual it
claims. A run that does not reach `tol` within `max_iter` iterations raises `ConvergenceError` (or warns with
`ConvergenceWarning`), stating the residual it reached.

Preconditioners approximate K by L L^T (L of shape (n, M)) and apply (L L^T + sigma I)^-1 by the Woodbury
identity in O(n M) per iteration (Gardner et al. 2018, GPyTorch; Frangella et al. 2023, "Randomized Nystrom
preconditioning"):
- "nystrom": L = K[:, S] W^-1/2 for M uniformly drawn columns S, W = K[S, S] (pseudo-inverse square root);
- "pivoted-cholesky": the greedy partial Cholesky factor of K, pivoting on the largest residual diagonal
  (Harbrecht et al. 2012), M columns of K computed one at a time.
sigma is the shift itself, or (shift 0) the mean residual diagonal of K - L L^T.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .operators import KernelOperator

__all__ = [
    "CGResult",
    "ConvergenceError",
    "ConvergenceWarning",
    "LowRankPreconditioner",
    "conjugate_gradients",
    "nystrom_factor",
    "pivoted_cholesky",
]


class ConvergenceError(RuntimeError):
    """An iterative solver stopped before reaching its tolerance; the message says which residual it reached."""


class ConvergenceWarning(RuntimeWarning):
    """An iterative solver returned a solution that did not reach its tolerance (on_nonconvergence="warn")."""


@dataclass(frozen=True)
class CGResult:
    """x (shaped like b), iterations run, the true relative residual of the worst column, and whether it is <= tol."""

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    tol: float


def default_tol(dtype: torch.dtype) -> float:
    """1e-8 in float64, 1e-4 in float32 (about sqrt(eps) of each, with room for the conditioning of K)."""
    return 1e-8 if dtype == torch.float64 else 1e-4


def conjugate_gradients(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    progress: bool | None = None,
    on_nonconvergence: str = "raise",
    what: str = "the kernel system",
) -> CGResult:
    """Solve A x = b for a symmetric positive-definite A given as `matvec`, column by column of b (n, k).

    `precondition(r)` applies an approximation of A^-1 (symmetric positive definite). Stops when every
    column's true relative residual is <= tol (default `default_tol(b.dtype)`), after at most max_iter
    (default max(100, 10 sqrt(n))) iterations; then raises ConvergenceError, or warns (on_nonconvergence="warn").
    """
    if on_nonconvergence not in ("raise", "warn"):
        raise ValueError(f"on_nonconvergence must be 'raise' or 'warn', got {on_nonconvergence!r}")
    was_1d = b.ndim == 1
    b2 = b[:, None] if was_1d else b
    n = b2.shape[0]
    tol = default_tol(b2.dtype) if tol is None else float(tol)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    max_iter = max(100, int(10 * math.sqrt(n))) if max_iter is None else int(max_iter)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    identity = precondition is None
    apply_p = (lambda r: r) if identity else precondition

    b_norm = torch.linalg.vector_norm(b2, dim=0)
    safe_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    x = torch.zeros_like(b2)
    r = b2.clone()
    iterations = 0
    residual = _worst(r, safe_norm, b_norm)
    disable = None if progress is None else not progress
    bar = tqdm(total=max_iter, desc="conjugate gradients", unit="it", disable=disable, leave=False)
    try:
        while residual > tol and iterations < max_iter:
            # One CG run from x (a restart when round-off had made the recurrence's residual drift from r).
            z = apply_p(r)
            p = z.clone()
            rz = (r * z).sum(0)
            while iterations < max_iter:
                q = matvec(p)
                pq = (p * q).sum(0)
                active = torch.linalg.vector_norm(r, dim=0) > tol * safe_norm * 0.5
                if bool((pq[active] <= 0).any()):
                    raise ValueError(
                        f"{what} is not positive definite (a CG direction p has p^T A p = "
                        f"{float(pq[active].min()):.3g} <= 0): the kernel is singular or not PSD; pass "
                        "diag_reg > 0 (e.g. 1e-6) to regularise it"
                    )
                alpha = torch.where(
                    active, rz / torch.where(active, pq, torch.ones_like(pq)), torch.zeros_like(pq)
                )
                x += alpha * p
                r -= alpha * q
                iterations += 1
                bar.update()
                rec = _worst(r, safe_norm, b_norm)
                bar.set_postfix(residual=f"{rec:.2e}", refresh=False)
                if rec <= tol:
                    break
                z = apply_p(r)
                rz_new = (r * z).sum(0)
                beta = torch.where(
                    active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), torch.zeros_like(rz)
                )
                p = z + beta * p
                rz = rz_new
            r = b2 - matvec(x)  # the true residual
            residual = _worst(r, safe_norm, b_norm)
    finally:
        bar.close()
    converged = residual <= tol
    if not converged:
        message = (
            f"conjugate gradients on {what} did not converge: relative residual {residual:.3g} after "
            f"{iterations} iterations, tol={tol:.3g}. Raise max_iter, use a stronger preconditioner (larger rank), "
            "or regularise with a larger diag_reg"
        )
        if on_nonconvergence == "raise":
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return CGResult(
        x=x[:, 0] if was_1d else x, iterations=iterations, residual=residual, converged=converged, tol=tol
    )


def _worst(r: torch.Tensor, safe_norm: torch.Tensor, b_norm: torch.Tensor) -> float:
    rel = torch.linalg.vector_norm(r, dim=0) / safe_norm
    rel = torch.where(b_norm > 0, rel, torch.zeros_like(rel))
    return float(rel.max()) if rel.numel() else 0.0


def nystrom_factor(op: KernelOperator, rank: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """L (n, <= rank) with L L^T = K[:, S] K[S, S]^+ K[S, :], S `rank` columns drawn uniformly without replacement."""
    n = op.shape[0]
    rank = min(int(rank), n)
    index = torch.randperm(n, generator=generator)[:rank].sort().values
    c = op.columns(index)
    w = c[index.to(c.device)]
    w = (w + w.T) / 2
    evals, evecs = torch.linalg.eigh(w)
    keep = evals > evals[-1].clamp(min=0) * rank * torch.finfo(w.dtype).eps * 10
    return c @ (evecs[:, keep] / torch.sqrt(evals[keep]))


def pivoted_cholesky(op: KernelOperator, rank: int, *, rel_tol: float = 1e-10) -> torch.Tensor:
    """The greedy pivoted partial Cholesky factor L (n, <= rank) of K, L L^T ~ K.

    Stops at `rank` columns or when the residual trace is <= rel_tol * trace(K).
    """
    n = op.shape[0]
    rank = min(int(rank), n)
    d = op.diagonal().clone()
    trace = float(d.sum())
    factor = torch.zeros((n, rank), dtype=op.dtype, device=op.device)
    used = 0
    for m in range(rank):
        pivot = int(torch.argmax(d))
        dp = float(d[pivot])
        if dp <= 0 or float(d.clamp(min=0).sum()) <= rel_tol * trace:
            break
        col = op.columns([pivot])[:, 0]
        col = col - factor[:, :m] @ factor[pivot, :m]
        col = col / math.sqrt(dp)
        factor[:, m] = col
        d -= col * col
        d[pivot] = 0.0
        used = m + 1
    return factor[:, :used]


class LowRankPreconditioner:
    """(L L^T + sigma I)^-1 applied by Woodbury: (r - L (sigma I + L^T L)^-1 L^T r) / sigma."""

    def __init__(self, factor: torch.Tensor, sigma: float) -> None:
        if not sigma > 0:
            raise ValueError(f"the preconditioner's shift sigma must be > 0, got {sigma}")
        self.factor = factor
        self.sigma = float(sigma)
        m = factor.shape[1]
        inner = factor.T @ factor + self.sigma * torch.eye(m, dtype=factor.dtype, device=factor.device)
        self._chol = torch.linalg.cholesky(inner)

    @property
    def rank(self) -> int:
        return self.factor.shape[1]

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        if self.rank == 0:
            return r / self.sigma
        u = torch.cholesky_solve(self.factor.T @ r, self._chol)
        return (r - self.factor @ u) / self.sigma


def build_preconditioner(
    op: KernelOperator, kind: str | None, rank: int, shift: float, generator: torch.Generator | None
) -> LowRankPreconditioner | None:
    """The preconditioner for op + shift I: kind "nystrom", "pivoted-cholesky" or None (none)."""
    if kind is None or rank == 0:
        return None
    if kind == "nystrom":
        factor = nystrom_factor(op, rank, generator)
    elif kind == "pivoted-cholesky":
        factor = pivoted_cholesky(op, rank)
    else:
        raise ValueError(f"preconditioner must be 'nystrom', 'pivoted-cholesky' or None, got {kind!r}")
    sigma = shift
    if not sigma > 0:
        residual = (op.diagonal() - (factor * factor).sum(1)).clamp(min=0)
        sigma = max(float(residual.mean()), float(op.diagonal().mean()) * 1e-10)
    return LowRankPreconditioner(factor, sigma)
