"""Quadrature of E[f(u) f(v)] over a bivariate Gaussian, accurate at any variance, chunked to a fixed memory bound.

For (u, v) ~ N(0, [[s11, s12], [s12, s22]]) with correlation rho = s12 / sqrt(s11 s22) (from `correlation`, the
one rule that decides identical points), the point of larger variance is u = sa z1 and, given u, the other is
v ~ N(rho (sb / sa) u, sb^2 (1 - rho^2)): E[f(u) f(v)] = E_u[f(u) E[f(v) | u]], two nested one-dimensional
Gaussian expectations E[h(m + s z)]. Each is done by a rule sized from the call's largest s:

- s <= 0.3: Gauss-Hermite (probabilists' nodes, weights summing to one) of order 8 to 24;
- s > 0.3: the change of variables x = sinh(t) over m +- 9 s, with composite Gauss-Legendre in t. Activations
  bend or saturate on a unit scale around x = 0 and are smooth (constant, linear) beyond, so the nodes are dense
  there and spread geometrically over the Gaussian's bulk; extra panel edges at equal steps in z resolve the
  Gaussian itself wherever it sits (the conditional law near rho = +-1 is narrow and far from 0). A fixed
  Gauss-Hermite rule cannot do this: its nodes are ~1/sqrt(order) apart in z, so once s >> 1 they step over the
  activation's whole transition (Tanh at variance 100 had E[phi'^2] wrong by 89% at order 96).

Taking the larger variance outside makes the result symmetric in the two points; at rho = 1 the inner rule
collapses onto v = u (s = 0 gives Hermite nodes m + 0 z_k exactly), so identical points give E[f(u)^2] as the
diagonal does. Every call estimates its error on a few entries against a rule twice as fine, refines when the
estimate exceeds the tolerance, and warns (`QuadratureAccuracyWarning`) when it still cannot meet it.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.special import roots_hermitenorm
from torch.nn import functional as F

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
    # rsqrt gives inf at +-0 and NaN below: both become 0 (two operations where masking took six; these run
    # on every tile's variance vectors).
    return torch.rsqrt(s).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # not in place: autograd keeps rsqrt


class QuadratureAccuracyWarning(RuntimeWarning):
    """A quadrature kernel map whose estimated error exceeds the requested tolerance (see `bivariate_expectations`)."""


DEFAULT_TOLERANCE = 1e-7
"""Default bound on a quadrature kernel map's error, relative to sqrt(E[f(u)^2] E[f(v)^2]) (and the same for f')."""

# The one-dimensional rule for E[h(m + s z)], z ~ N(0, 1), used twice (outer and inner). Measured on tanh, erf,
# sigmoid, softplus and the squares of their derivatives (the activations vary on a unit scale in x = m + s z):
# s <= _GH_LIMIT: Gauss-Hermite, whose order follows s (error < 1e-13 at the orders below);
# s >  _GH_LIMIT: x = sinh(t) over the +-_SPAN s range, composite Gauss-Legendre in t with _PANEL_POINTS points
#                 per panel. The panels' edges are the union of equal steps in t at most _PANEL_WIDTH apart,
#                 which resolve the activation (unit scale around x = 0, relative scale further out), and of
#                 _GAUSS_PANELS equal steps in z, which resolve the Gaussian wherever it sits (a narrow one far
#                 from 0, as the conditional law near rho = +-1 is). The number of panels grows like log(s).
_GH_LIMIT = 0.3
_GH_ORDERS = ((0.03, 8), (0.1, 12), (0.2, 16), (_GH_LIMIT, 24))
_SPAN = 9.0  # the Gaussian mass beyond 9 standard deviations is 2e-19
_PANEL_POINTS = 10
_PANEL_WIDTH = 1.5
_GAUSS_PANELS = 4
_MAX_LEVEL = 2  # adaptive refinement: up to 2 doublings of the points per panel
_PROBES = 6  # entries per call re-computed at the next level to estimate the error

# Temporaries allowed per chunk. Each entry of a chunk holds about this many (outer, inner) arrays at once
# (inner nodes, their weights and temporaries, values, derivatives), so the chunk size follows from this bound.
_CHUNK_BYTES = 16 * 2**20
_ARRAYS_PER_ENTRY = 8


@functools.lru_cache(maxsize=64)
def _legendre_np(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes in [0, 1] and weights summing to 1."""
    x, w = np.polynomial.legendre.leggauss(points)
    return 0.5 * (x + 1.0), 0.5 * w


def _sizes(s_max: float, level: int, order: int | None) -> tuple[int, int]:
    """(points, t-steps) of the one-dimensional rule for standard deviations up to `s_max`; 0 steps: Hermite.

    With steps > 0 the rule has steps + _GAUSS_PANELS - 1 panels of points / panels points each.
    """
    if order is not None:
        return order, 0  # a fixed order: Gauss-Hermite at every variance
    if not math.isfinite(s_max):
        s_max = 0.0  # non-finite variances are the caller's to report; keep the rule finite
    if s_max <= _GH_LIMIT:
        return next(n for limit, n in _GH_ORDERS if s_max <= limit) << level, 0
    steps = max(1, math.ceil(2.0 * math.asinh(_SPAN * s_max) / _PANEL_WIDTH))
    panels = steps + _GAUSS_PANELS - 1
    return (_PANEL_POINTS << level) * panels, steps


def _rule(m: torch.Tensor, s: torch.Tensor, points: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes x and weights w, shaped broadcast(m, s) + (points,), with sum(w h(x)) ~ E[h(m + s z)].

    Entries with s <= _GH_LIMIT get the Gauss-Hermite nodes m + s z_k (exact affine images, so s = 0 gives
    h(m) times weights summing to one), the others the sinh-mapped composite rule described above.
    """
    z, wz = gauss_hermite(points, m.dtype, m.device)
    m_, s_ = m[..., None], s[..., None]
    x = torch.addcmul(m_, s_, z)
    if steps == 0:
        return x, wz.expand(x.shape)
    dtype, device = m.dtype, m.device
    panels = steps + _GAUSS_PANELS - 1
    c, om = (torch.as_tensor(a, dtype=dtype, device=device) for a in _legendre_np(points // panels))
    small = s_ <= _GH_LIMIT
    s_safe = torch.where(small, torch.ones_like(s_), s_)
    t_lo = torch.asinh(m_ - _SPAN * s_safe)
    t_hi = torch.asinh(m_ + _SPAN * s_safe)
    fractions = torch.linspace(0.0, 1.0, steps + 1, dtype=dtype, device=device)
    z_edges = torch.linspace(-_SPAN, _SPAN, _GAUSS_PANELS + 1, dtype=dtype, device=device)[1:-1]
    edges = torch.cat(
        [torch.lerp(t_lo, t_hi, fractions), torch.asinh(torch.addcmul(m_, s_safe, z_edges))], dim=-1
    )
    edges = edges.sort(dim=-1).values
    left = edges[..., :-1, None]
    width = (edges[..., 1:] - edges[..., :-1])[..., None]
    t = torch.addcmul(left, width, c).flatten(-2)  # (..., panels * per_panel)
    x_sinh = torch.sinh(t)
    weights = torch.cosh(t).mul_((width * om).flatten(-2))
    gauss = (x_sinh - m_).div_(s_safe)
    weights.mul_(gauss.square_().mul_(-0.5).exp_()).div_(s_safe).mul_(1.0 / math.sqrt(2.0 * math.pi))
    return torch.where(small, x, x_sinh), torch.where(small, wz, weights)


def _expectations(
    value_and_derivative: ValueAndDerivative,
    sa: torch.Tensor,
    ratio: torch.Tensor,
    s_in: torch.Tensor,
    need_dot: bool,
    outer: tuple[int, int],
    inner: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E[f(u) f(v)] (and E[f'(u) f'(v)]) for u = sa z1 and v | u ~ N(ratio u, s_in^2), on 1-D entries."""
    x, w = _rule(torch.zeros_like(sa), sa, *outer)  # (k, n_out)
    y, wy = _rule(ratio[:, None] * x, s_in[:, None].expand_as(x), *inner)  # (k, n_out, n_in)
    fx, dx = value_and_derivative(x, need_dot)
    del x
    fy, dy = value_and_derivative(y, need_dot)
    del y
    value = (fy.mul_(wy).sum(-1)).mul_(fx).mul_(w).sum(-1)
    dot = None
    if need_dot:
        dot = (dy.mul_(wy).sum(-1)).mul_(dx).mul_(w).sum(-1)
    return value, dot


def _chunked(
    value_and_derivative: ValueAndDerivative,
    sa: torch.Tensor,
    ratio: torch.Tensor,
    s_in: torch.Tensor,
    need_dot: bool,
    outer: tuple[int, int],
    inner: tuple[int, int],
    chunk_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_expectations` over chunks of entries, each allocating at most about `chunk_bytes` of temporaries."""
    total = sa.numel()
    itemsize = sa.element_size()
    chunk = max(1, chunk_bytes // (_ARRAYS_PER_ENTRY * outer[0] * inner[0] * itemsize))
    if chunk >= total:
        return _expectations(value_and_derivative, sa, ratio, s_in, need_dot, outer, inner)
    value = torch.empty_like(sa)
    dot = torch.empty_like(sa) if need_dot else None
    for start in range(0, total, chunk):
        part = slice(start, min(start + chunk, total))
        v, d = _expectations(value_and_derivative, sa[part], ratio[part], s_in[part], need_dot, outer, inner)
        value[part] = v
        if dot is not None:
            dot[part] = d
    return value, dot


def _check_finite_result(
    value: torch.Tensor, dot: torch.Tensor | None, sa: torch.Tensor, s_in: torch.Tensor, name: str
) -> None:
    """Refuse NaN or inf produced by the function itself (the inputs were finite): name it and say why."""
    total = value.sum() if dot is None else value.sum() + dot.sum()
    if bool(torch.isfinite(total)):  # one pass: inf and NaN propagate through a sum
        return
    if not (bool(torch.isfinite(sa).all()) and bool(torch.isfinite(s_in).all())):
        return  # non-finite variances came from below; the kernel's block check reports them
    bad = ~torch.isfinite(value) if dot is None else ~(torch.isfinite(value) & torch.isfinite(dot))
    if not bool(bad.any()):
        return  # finite entries whose sum overflowed
    raise ValueError(
        f"{name} returned NaN or inf: {int(bad.sum())} kernel entries at pre-activation standard deviations up "
        f"to {float(sa[bad].max()):.3g} are not finite. Its function (or derivative) must be finite on the whole "
        "real line, where the Gaussian pre-activations take their values (e.g. torch.log or torch.sqrt are not, "
        "torch.exp overflows at large variances): guard it (e.g. torch.log1p(x.abs())), or normalise the inputs "
        "or use a smaller w_std to keep the variances moderate"
    )


def bivariate_expectations(
    value_and_derivative: ValueAndDerivative,
    s12: torch.Tensor,
    s11: torch.Tensor,
    s22: torch.Tensor,
    *,
    order: int | None = None,
    need_dot: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str = "a quadrature activation",
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E[f(u) f(v)] and (if `need_dot`) E[f'(u) f'(v)] for (u, v) ~ N(0, [[s11, s12], [s12, s22]]).

    `value_and_derivative(x, need_dot)` returns f(x) and f'(x) (or None) elementwise. s11 and s22 broadcast
    against s12; the results have s12's broadcast shape, dtype and device.

    Rule: with rho from `correlation`, the point of larger variance is u = sa z1 (outer integral) and the other
    is, given u, v ~ N(rho (sb / sa) u, sb^2 (1 - rho^2)) (inner integral), each by the one-dimensional rule of
    `_rule`, whose size follows from the largest standard deviation in the call. Taking the larger variance
    outside makes the rule symmetric in the two points; at rho = 1 the inner rule collapses onto v = u exactly,
    so identical points give E[f(u)^2], as the diagonal does.

    Accuracy: the error relative to sqrt(E[f(u)^2] E[f(v)^2]) (the same with f' for the second result) is below
    `tolerance` (default 1e-8) for activations that vary on a unit scale (tanh, sigmoid, softplus, erf, GELU,
    SiLU, ...) at variances from 0 to 1e4 and beyond. Each call re-computes a few entries (the largest
    variances, the most extreme correlation, one from the middle) with twice the points per dimension; where
    that estimate exceeds `tolerance`, the call is repeated with more points (up to 4x), and if it still
    exceeds it (functions that oscillate or bend sharply at the variances given) a `QuadratureAccuracyWarning`
    says so. A fixed `order` is the `order`-point Gauss-Hermite rule per dimension at every variance (fast and
    accurate at small variances only, for standard deviations up to about 0.06 sqrt(order) for tanh); it is
    checked against twice its order and warns the same way, but is not refined.
    Work is split into chunks of entries so that no chunk allocates more than about `chunk_bytes`.
    """
    shape = broadcast_shape(s12, s11, s22)
    dtype, device = s12.dtype, s12.device
    rho = correlation(s12.broadcast_to(shape).clone(), s11, s22).reshape(-1)
    sd1 = torch.sqrt(s11.clamp(min=0)).broadcast_to(shape).reshape(-1)
    sd2 = torch.sqrt(s22.clamp(min=0)).broadcast_to(shape).reshape(-1)
    sa = torch.maximum(sd1, sd2)
    sb = torch.minimum(sd1, sd2)
    # rho sb / sa (0 where both variances vanish); (1 - rho)(1 + rho), each factor exact near its own end.
    ratio = rho * torch.where(sa > 0, sb / torch.where(sa > 0, sa, torch.ones_like(sa)), torch.zeros_like(sa))
    s_in = sb * torch.sqrt(((1.0 - rho) * (1.0 + rho)).clamp_(min=0))
    total = rho.numel()
    if total == 0:
        empty = torch.empty(shape, dtype=dtype, device=device)
        return empty, (empty.clone() if need_dot else None)
    sa_max = float(sa.max())
    s_in_max = float(s_in.max())

    def run(level: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        outer = _sizes(sa_max, level, order)
        inner = _sizes(s_in_max, level, order)
        return _chunked(value_and_derivative, sa, ratio, s_in, need_dot, outer, inner, chunk_bytes)

    # Below a few hundred ulps the estimate measures the dtype's rounding, not the rule (float32: 1e-5).
    tolerance = max(tolerance, 100.0 * torch.finfo(dtype).eps)
    level = 0
    value, dot = run(level)
    _check_finite_result(value, dot, sa, s_in, name)
    while True:
        error = _estimate_error(
            value_and_derivative, value, dot, sa, ratio, s_in, sa_max, s_in_max, level, order, chunk_bytes
        )
        if error <= tolerance:
            break
        if order is not None or level >= _MAX_LEVEL:
            warnings.warn(
                f"the kernel map of {name} has an estimated quadrature error of {error:.2g} (relative to the "
                f"scale of the entries), above the tolerance {tolerance:.2g}, at standard deviations up to "
                f"{sa_max:.3g}: the function bends or oscillates too sharply for the rule at these variances. "
                + ("Leave order=None for the adaptive rule (or raise order), " if order is not None else "")
                + "normalise the inputs or use a smaller w_std to keep pre-activation variances moderate",
                QuadratureAccuracyWarning,
                stacklevel=4,
            )
            break
        level += 1
        value, dot = run(level)
        _check_finite_result(value, dot, sa, s_in, name)
    return value.reshape(shape), (dot.reshape(shape) if dot is not None else None)


def _estimate_error(
    value_and_derivative: ValueAndDerivative,
    value: torch.Tensor,
    dot: torch.Tensor | None,
    sa: torch.Tensor,
    ratio: torch.Tensor,
    s_in: torch.Tensor,
    sa_max: float,
    s_in_max: float,
    level: int,
    order: int | None,
    chunk_bytes: int,
) -> float:
    """The largest difference, relative to the entries' scale, between `value` (`dot`) and the next level's
    rule on a few probe entries: the largest variance, the widest conditional spread, the narrowest one above
    zero, and the middle entry."""
    total = value.numel()
    positive = torch.where(s_in > 0, s_in, torch.full_like(s_in, math.inf))
    probes = torch.unique(
        torch.stack(
            [sa.argmax(), s_in.argmax(), positive.argmin(), torch.tensor(total // 2, device=sa.device)]
        )
    )[:_PROBES]
    finer = (2 * order) if order is not None else None
    outer = _sizes(sa_max, level + 1, finer)
    inner = _sizes(s_in_max, level + 1, finer)
    need_dot = dot is not None
    ref_value, ref_dot = _chunked(
        value_and_derivative, sa[probes], ratio[probes], s_in[probes], need_dot, outer, inner, chunk_bytes
    )
    # The scale sqrt(E[f(u)^2] E[f(v)^2]), by the finer rule at rho = 1 for each point's own variance
    # (sb^2 = (rho sb / sa)^2 sa^2 + s_in^2).
    zero = torch.zeros_like(sa[probes])
    ones = torch.ones_like(sa[probes])
    square_a = _chunked(value_and_derivative, sa[probes], ones, zero, need_dot, outer, inner, chunk_bytes)
    sb_probe = torch.sqrt(ratio[probes] ** 2 * sa[probes] ** 2 + s_in[probes] ** 2)
    square_b = _chunked(value_and_derivative, sb_probe, ones, zero, need_dot, outer, inner, chunk_bytes)
    errors = []
    for got, ref, a, b in (
        (value, ref_value, square_a[0], square_b[0]),
        (dot, ref_dot, square_a[1], square_b[1]),
    ):
        if got is None or ref is None or a is None or b is None:
            continue
        scale = torch.sqrt((a * b).clamp(min=0))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        errors.append(float(((got[probes] - ref).abs() / scale).max()))
    return max(errors, default=0.0)


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
