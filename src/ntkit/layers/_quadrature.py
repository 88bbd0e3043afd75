"""Gauss-Hermite quadrature of E[f(u) f(v)] over a bivariate Gaussian, chunked to a fixed memory bound.

For (u, v) ~ N(0, [[s11, s12], [s12, s22]]) with correlation rho = s12 / sqrt(s11 s22) we write

    u = sqrt(s11) (alpha z1 + beta z2),   v = sqrt(s22) (alpha z1 - beta z2),
    alpha = sqrt((1 + rho) / 2),          beta = sqrt((1 - rho) / 2),

with z1, z2 independent standard normals (the eigen-decomposition of the correlation matrix), and apply the
tensor-product Gauss-Hermite rule (probabilists' nodes, weights summing to one) in (z1, z2). Swapping the two
points maps z2 to -z2, under which the rule is symmetric, so the result is symmetric in the two points; at
rho = 1 (beta = 0) u and v coincide node by node, so identical points give E[f(u)^2] exactly as the diagonal
does. The rule integrates polynomials of degree < 2 * order in each variable exactly; for activations analytic
in a strip around the real axis (tanh, sigmoid, softplus, erf, GELU) the error falls geometrically with
sqrt(order) (Gautschi, "Orthogonal Polynomials: Computation and Approximation", 2004, section 1.4).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.special import roots_hermitenorm
from torch.nn import functional as F

# Temporaries allowed per chunk. Each entry of a chunk holds up to about eight (order, order) arrays at once
# (arguments, values, derivatives and their temporaries), so the chunk size follows from this bound.
_CHUNK_BYTES = 16 * 2**20
_ARRAYS_PER_ENTRY = 8

ValueAndDerivative = Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]


@functools.lru_cache(maxsize=32)
def _nodes_weights_np(order: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = roots_hermitenorm(order)
    weights = weights / weights.sum()
    return nodes, weights


def gauss_hermite(order: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the `order`-point rule for E[g(z)], z ~ N(0, 1); the weights sum to one."""
    nodes, weights = _nodes_weights_np(order)
    return (
        torch.as_tensor(nodes, dtype=dtype, device=device),
        torch.as_tensor(weights, dtype=dtype, device=device),
    )


def correlation(s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor) -> torch.Tensor:
    """rho = s12 / sqrt(s11 s22), clamped to [-1, 1], snapped to +-1 within a few ulps, 0 at zero variance.

    The one place where ntkit decides that two points are identical (theta = 0 exactly) or antipodal: every
    kernel map that depends on the angle (the closed forms of a s + b |s| and all quadratures) calls this.
    `s12`'s storage is overwritten with the result (the callers hand it over); s11 and s22 are not modified.
    """
    # F.threshold_ (x <= threshold -> value) is one cheap pass that snaps and clamps one end of [-1, 1]: on
    # -rho it sets correlations within a few ulps of 1 (or above 1) to exactly 1, on rho those near -1 to
    # exactly -1 (antipodal inputs, where the kink of |s| makes Sdot ill-conditioned).
    snap = snap_tolerance(s12.dtype) - 1.0
    rho = s12.mul_(_safe_rsqrt(s11).neg_()).mul_(_safe_rsqrt(s22))
    F.threshold_(rho, snap, -1.0)
    return F.threshold_(rho.neg_(), snap, -1.0)


def broadcast_shape(s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor) -> torch.Size:
    """The broadcast shape of the three, with a fast path for the usual case that s12 already has it.

    `torch.broadcast_shapes` is written in Python and costs tens of microseconds, which is a measurable share of
    a spatial kernel's small tiles; the check below costs a few.
    """
    shape = s12.shape
    for other in (s11.shape, s22.shape):
        if len(other) > len(shape) or any(
            o not in (1, d) for o, d in zip(reversed(other), reversed(shape), strict=False)
        ):
            return torch.broadcast_shapes(s12.shape, s11.shape, s22.shape)
    return shape


def snap_tolerance(dtype: torch.dtype) -> float:
    """Correlations this close to +-1 are rounding noise of identical (antipodal) points: set to +-1.

    float64: 32 eps (7e-15). The Gram entry of two identical inputs and their squared norms are dot products
    of length d summed in different orders, which differ by up to ~sqrt(d) eps (23 eps measured for
    d = 3000). float32 (whose dot products showed <= 4 eps): 8 eps. Snapping a genuinely distinct pair this
    close changes sqrt(1 - rho^2) by at most sqrt(2 tol) (1.2e-7 in float64), which moves S_new only at
    second order and Sdot by about that much relative: below what the input's own rounding already implies.
    """
    eps = torch.finfo(dtype).eps
    return (32.0 if dtype == torch.float64 else 8.0) * eps


def _safe_rsqrt(s: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(s) where s > 0, else 0 (a zero-variance point has correlation 0 with everything)."""
    positive = s > 0
    return torch.where(
        positive, torch.rsqrt(torch.where(positive, s, torch.ones_like(s))), torch.zeros_like(s)
    )


def bivariate_expectations(
    value_and_derivative: ValueAndDerivative,
    s12: torch.Tensor,
    s11: torch.Tensor,
    s22: torch.Tensor,
    *,
    order: int,
    need_dot: bool = True,
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E[f(u) f(v)] and (if `need_dot`) E[f'(u) f'(v)] for (u, v) ~ N(0, [[s11, s12], [s12, s22]]).

    `value_and_derivative(x, need_dot)` returns f(x) and f'(x) (or None) elementwise. s11 and s22 broadcast
    against s12; the results have s12's broadcast shape, dtype and device. Work is split into chunks of
    entries so that no chunk allocates more than about `chunk_bytes` of temporaries.
    """
    shape = broadcast_shape(s12, s11, s22)
    dtype, device = s12.dtype, s12.device
    rho = correlation(s12.broadcast_to(shape).clone(), s11, s22).reshape(-1)
    sd1 = torch.sqrt(s11.clamp(min=0)).broadcast_to(shape).reshape(-1)
    sd2 = torch.sqrt(s22.clamp(min=0)).broadcast_to(shape).reshape(-1)
    # alpha, beta from (1 +- rho) / 2, each factor exact near its own end of [-1, 1].
    alpha = torch.sqrt((1.0 + rho) * 0.5)
    beta = torch.sqrt((1.0 - rho) * 0.5)

    nodes, weights = gauss_hermite(order, dtype, device)
    weights2 = (weights[:, None] * weights[None, :]).reshape(-1)

    total = rho.numel()
    kernel = torch.empty(total, dtype=dtype, device=device)
    dot = torch.empty(total, dtype=dtype, device=device) if need_dot else None
    itemsize = torch.finfo(dtype).bits // 8
    chunk = max(1, chunk_bytes // (_ARRAYS_PER_ENTRY * order * order * itemsize))
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        # u_ij = sd1 (alpha z_i + beta z_j) and v_ij = sd2 (alpha z_i - beta z_j) as outer sums of (m, order)
        # factors: one pass over the (m, order, order) arrays each.
        along1 = (alpha[start:stop] * sd1[start:stop])[:, None] * nodes
        across1 = (beta[start:stop] * sd1[start:stop])[:, None] * nodes
        along2 = (alpha[start:stop] * sd2[start:stop])[:, None] * nodes
        across2 = (beta[start:stop] * sd2[start:stop])[:, None] * nodes
        u = (along1[:, :, None] + across1[:, None, :]).reshape(stop - start, -1)
        fu, du = value_and_derivative(u, need_dot)
        del u
        v = (along2[:, :, None] - across2[:, None, :]).reshape(stop - start, -1)
        fv, dv = value_and_derivative(v, need_dot)
        del v
        kernel[start:stop] = fu.mul_(fv) @ weights2
        if dot is not None:
            dot[start:stop] = du.mul_(dv) @ weights2
        del fu, fv, du, dv
    result = kernel.reshape(shape)
    return result, (dot.reshape(shape) if dot is not None else None)


def autograd_value_and_derivative(fn: Callable[[torch.Tensor], torch.Tensor]) -> ValueAndDerivative:
    """Wrap an elementwise `fn` so that its derivative comes from autograd (exact as fn is elementwise)."""

    def value_and_derivative(x: torch.Tensor, need_dot: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not need_dot:
            with torch.no_grad():
                return fn(x), None
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            value = fn(leaf)
            (derivative,) = torch.autograd.grad(value, leaf, grad_outputs=torch.ones_like(value))
        return value.detach(), derivative.detach()

    return value_and_derivative


def univariate_expectation(fn: Callable[[torch.Tensor], torch.Tensor], variance: float) -> float:
    """E[fn(sqrt(variance) z)], z ~ N(0, 1), in float64, accurate also for large variances.

    Composite 10-point Gauss-Legendre over z in [-12, 12] (the tail beyond carries < 1e-32 of the mass) with
    panels 0.5 wide in x = sqrt(variance) z: activations vary on a unit scale in x, which a global
    Gauss-Hermite rule in z cannot resolve once the variance is large. Used for the one-dimensional moments
    of edge_of_chaos / c_sigma only, where the cost (a few thousand evaluations) does not matter.
    """
    scale = math.sqrt(max(variance, 0.0))
    panels = max(96, math.ceil(24.0 * scale / 0.5))
    nodes, weights = np.polynomial.legendre.leggauss(10)
    edges = np.linspace(-12.0, 12.0, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    z = (mid[:, None] + half[:, None] * nodes[None, :]).ravel()
    w = (half[:, None] * weights[None, :]).ravel() * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    with torch.no_grad():
        values = fn(torch.as_tensor(scale * z, dtype=torch.float64))
    return float(values @ torch.as_tensor(w, dtype=torch.float64))
