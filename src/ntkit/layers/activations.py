"""Activations: each knows its elementwise function, its torch module and its infinite-width kernel map.

For pre-activations (u, v) ~ N(0, [[S11, S12], [S12, S22]]) an activation phi maps the covariance to

    S_new = E[phi(u) phi(v)]      (the NNGP step; Neal 1996, Lee et al. 2018)
    Sdot  = E[phi'(u) phi'(v)]    (the NTK recursion multiplies by it; Jacot et al. 2018)

Closed forms: the family phi(s) = a s + b |s| (ReLU, Abs, LeakyReLU, Identity; the arc-cosine kernel of
Cho & Saul 2009), erf (Williams 1997) and exact GELU (Tsuchida, Pearce, van der Heide, Roosta & Gallagher
2021, "Avoiding kernel fixed points: computing with ELU and GELU infinite networks"; the formulas of
neural-tangents' `stax.Gelu`). Everything else (Tanh, Sigmoid, Softplus, any `Elementwise(fn)`) by
quadrature over the bivariate Gaussian, accurate at any variance (see `_quadrature`).

Numerics (docs/architecture.md): correlations are clamped to [-1, 1] and those within a few ulps of +-1 are set to
exactly +-1, so identical points give theta = 0 exactly and `diag_map` agrees with `kernel_map` on them; a
zero variance gives correlation 0 (theta = pi / 2) and finite values; sqrt(S11 S22 - S12^2) is always formed
as sqrt(S11) sqrt(S22) sqrt((1 - rho)(1 + rho)), never from the cancelled difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy.optimize import brentq
from torch import nn
from torch.nn import functional as F

from .._validation import check_int, check_real
from . import _elementwise, _fused, _quadrature
from .base import Layer
from .state import KernelState, LayerError, Shape

__all__ = [
    "GELU",
    "Abs",
    "AbsLinear",
    "Activation",
    "ActivationModule",
    "Elementwise",
    "Erf",
    "Identity",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "c_sigma",
    "edge_of_chaos",
]

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class ActivationModule(nn.Module):
    """The finite-width twin of an activation: applies `activation.fn` elementwise."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation.fn(x)

    def extra_repr(self) -> str:
        return repr(self.activation)


class Activation(Layer):
    """Base class of activations: `fn`, `derivative`, `module`, and the kernel maps `kernel_map` / `diag_map`.

    As a layer (`map_state`) an activation acts entrywise on every pair of positions (p, p'), with the
    variances S1[p, p] and S2[p', p'], on the cross-covariances and on each side's self-covariance alike, and
    multiplies the NTK by Sdot. Its input must be Gaussian pre-activations (after Dense, Conv, or a sum of them).

    Subclasses implement `fn`, `derivative` and `kernel_map`; `diag_map` is `kernel_map` on identical points.
    `block_cost` is the working memory of `kernel_map` relative to the closed forms: these write S_new over
    s12's storage and allocate one (a, b) tensor (Sdot) plus, for AbsLinear and Erf, one per-thread scratch
    tile reused across calls; the quadrature ones add a fixed ~16 MB of chunked temporaries.
    """

    block_cost: float = 1.0

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x), elementwise."""
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """phi'(x), elementwise (almost everywhere for the piecewise-linear ones)."""
        raise NotImplementedError

    def module(
        self,
        in_shape: Shape | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        """A torch module applying phi elementwise (it has no parameters, so the arguments are not needed)."""
        return ActivationModule(self)

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def map_state(self, state: KernelState) -> KernelState:
        if not state.gaussian:
            raise LayerError(
                f"{self!r} needs Gaussian pre-activations as input (the output of Dense, Conv, or a sum of them), "
                "but its input is the network input or another activation's output; put a Dense or Conv before it"
            )
        v1, v2 = state.pair_variances()
        need_dot = state.need_ntk and state.ntk is not None
        if self._fused_map(state.nngp, state.ntk if need_dot else None, v1, v2):
            nngp, ntk = state.nngp, state.ntk
        else:
            nngp, dot = self.kernel_map(state.nngp, v1, v2, need_dot=need_dot)
            ntk = state.ntk.mul_(dot) if need_dot and dot is not None else state.ntk
        return state.replace(
            nngp=nngp,
            ntk=ntk,
            **state.map_covariances(lambda cov: self._self_map(state, cov)),
            gaussian=False,
        )

    def _fused_map(
        self, s12: torch.Tensor, ntk: torch.Tensor | None, s11: torch.Tensor, s22: torch.Tensor
    ) -> bool:
        """s12 <- S_new and ntk <- ntk Sdot in one fused loop (see `_fused`), if this activation has one and it
        applies here; False leaves both untouched for `kernel_map`."""
        return False

    def _self_map(self, state: KernelState, cov: torch.Tensor) -> torch.Tensor:
        """The map on one side's self-covariance: on the variances alone, unless the whole spatial covariance
        is kept (then entrywise over (p, p'), its diagonal being identical points)."""
        if not state.full or not state.spatial:
            return self.diag_map(cov)
        v_p, v_q = state.self_variances(cov)
        value, _ = self.kernel_map(cov, v_p, v_q, need_dot=False)
        return value

    def kernel_map(
        self, s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, *, need_dot: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(E[phi(u) phi(v)], E[phi'(u) phi'(v)] or None) for (u, v) ~ N(0, [[s11, s12], [s12, s22]]).

        s12 has shape (a, b), s11 (a, 1) and s22 (1, b) (any shapes that broadcast work). s12's storage may be
        overwritten (the caller hands it over); s11 and s22 are not modified. Results keep s12's dtype/device.
        """
        raise NotImplementedError

    def diag_map(self, s11: torch.Tensor) -> torch.Tensor:
        """E[phi(u)^2] for u ~ N(0, s11), any shape: `kernel_map` on identical points, so the two agree."""
        value, _ = self.kernel_map(s11.clone(), s11, s11, need_dot=False)
        return value

    def _moments(self, variance: float) -> tuple[float, float]:
        """(E[phi(u)^2], E[phi'(u)^2]) for u ~ N(0, variance), in float64."""
        s = torch.full((1, 1), variance, dtype=torch.float64)
        value, dot = self.kernel_map(s.clone(), s, s, need_dot=True)
        assert dot is not None
        return float(value), float(dot)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ------------------------------------------------------------------------------------------------------------
# phi(s) = a s + b |s|
# ------------------------------------------------------------------------------------------------------------
def _sqrt_one_minus_square(rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt((1 - rho)(1 + rho)) in the per-thread workspace, a fresh tensor the caller may use as output).

    Both factors are exact near their own end of [-1, 1], so no digits cancel (a correlation of exactly +-1
    gives exactly 0).
    """
    root = torch.sub(torch.ones((), dtype=rho.dtype, device=rho.device), rho, out=_elementwise.workspace(rho))
    fresh = torch.add(rho, 1.0)
    root.mul_(fresh)
    return _elementwise.sqrt(root, out=root), fresh


class AbsLinear(Activation):
    """phi(s) = a s + b |s|, with the arc-cosine kernel of degree 1 (Cho & Saul 2009) in closed form.

    With rho = S12 / sqrt(S11 S22) = cos(theta) and c = 2 b^2 / pi:

        S_new = sqrt(S11 S22) [ c sqrt(1 - rho^2) + rho Sdot ]
              = (2 b^2 / pi) sqrt(S11 S22 - S12^2) + ((a^2 + b^2) - 2 b^2 theta / pi) S12,
        Sdot  = a^2 + c arcsin(rho) = (a^2 + b^2) - 2 b^2 theta / pi,

    since arcsin(rho) = pi / 2 - theta. ReLU = (1/2, 1/2), Abs = (0, 1), LeakyReLU(alpha) = ((1 + alpha) / 2,
    (1 - alpha) / 2), Identity = (1, 0). E[u |v|] = 0 by the symmetry (u, v) -> (-u, -v), so only the |.| part
    contributes beyond the linear one.
    """

    def __init__(self, a: float, b: float) -> None:
        self.a = check_real(a, "a")
        self.b = check_real(b, "b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.b == 0.0:
            return x * self.a
        if self.a == 0.0:
            return x.abs() * self.b
        return torch.addcmul(
            x * self.a, x.abs(), torch.ones((), dtype=x.dtype, device=x.device), value=self.b
        )

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * self.b + self.a

    def kernel_map(
        self, s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, *, need_dot: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a2 = self.a * self.a
        c = 2.0 * self.b * self.b / math.pi
        shape = _quadrature.broadcast_shape(s12, s11, s22)
        if s12.shape != shape:
            s12 = s12.broadcast_to(shape).clone()
        rho = _quadrature.correlation(s12, s11, s22)  # over s12's storage

        root, dot = _sqrt_one_minus_square(rho)  # sqrt((1 - rho)(1 + rho)), and a fresh buffer
        _elementwise.asin(rho, out=dot)
        dot.mul_(c).add_(a2)  # Sdot
        # S_new = sqrt(S11) sqrt(S22) (c root + rho Sdot), written over rho (s12's storage)
        value = torch.addcmul(root, rho, dot, value=1.0 / c, out=rho) if c > 0.0 else rho.mul_(dot)
        sd1 = torch.sqrt(s11.clamp(min=0))
        value.mul_(sd1.mul_(c) if c > 0.0 else sd1).mul_(torch.sqrt(s22.clamp(min=0)))
        return value, (dot if need_dot else None)

    def _fused_map(
        self, s12: torch.Tensor, ntk: torch.Tensor | None, s11: torch.Tensor, s22: torch.Tensor
    ) -> bool:
        if (
            self.b == 0.0  # linear: the eager map is exact
            or not _fused.usable(s12, s11, s22)
            or s12.shape != _quadrature.broadcast_shape(s12, s11, s22)
        ):
            return False
        rows, cols = _fused.pair_factors(s12, s11), _fused.pair_factors(s12, s22)
        args = (
            s12,
            ntk,
            _quadrature._safe_rsqrt(rows),
            _quadrature._safe_rsqrt(cols),
            torch.sqrt(rows.clamp(min=0)),
            torch.sqrt(cols.clamp(min=0)),
            _fused.scalar(self.a * self.a, s12),
            _fused.scalar(2.0 * self.b * self.b / math.pi, s12),
            _quadrature.snap_tolerance(s12.dtype),
        )
        done, _ = _fused.run(_fused.abs_linear_, *args)
        return done

    def _config(self) -> tuple:
        return (self.a, self.b)

    def __repr__(self) -> str:
        return f"AbsLinear(a={self.a!r}, b={self.b!r})"


class ReLU(AbsLinear):
    """phi(s) = max(s, 0) = s / 2 + |s| / 2: the arc-cosine kernel of degree 1 (Cho & Saul 2009)."""

    def __init__(self) -> None:
        super().__init__(0.5, 0.5)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    def __repr__(self) -> str:
        return "ReLU()"


class Abs(AbsLinear):
    """phi(s) = |s|."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)

    def __repr__(self) -> str:
        return "Abs()"


class LeakyReLU(AbsLinear):
    """phi(s) = s for s >= 0, negative_slope * s otherwise; = ((1 + alpha) / 2) s + ((1 - alpha) / 2) |s|."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = check_real(negative_slope, "negative_slope")
        super().__init__((1.0 + self.negative_slope) / 2.0, (1.0 - self.negative_slope) / 2.0)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.negative_slope))

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope!r})"


class Identity(AbsLinear):
    """phi(s) = s: S_new = S12 and Sdot = 1 exactly (a linear layer)."""

    def __init__(self) -> None:
        super().__init__(1.0, 0.0)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)

    def kernel_map(
        self, s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, *, need_dot: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shape = _quadrature.broadcast_shape(s12, s11, s22)
        value = s12 if s12.shape == shape else s12.broadcast_to(shape).clone()
        return value, (torch.ones(shape, dtype=s12.dtype, device=s12.device) if need_dot else None)

    def __repr__(self) -> str:
        return "Identity()"


# ------------------------------------------------------------------------------------------------------------
# erf and GELU
# ------------------------------------------------------------------------------------------------------------
class Erf(Activation):
    """phi(s) = erf(s), with Williams' (1997) closed form.

    With q_i = 1 + 2 S_ii and r = 2 S12 / sqrt(q1 q2) (|r| < 1 always):

        S_new = (2 / pi) arcsin(r),
        Sdot  = (4 / pi) / sqrt(q1 q2 - 4 S12^2) = (4 / pi) / (sqrt(q1 q2) sqrt((1 - r)(1 + r))).
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-x * x) * (2.0 * _INV_SQRT_PI)

    def kernel_map(
        self, s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, *, need_dot: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shape = _quadrature.broadcast_shape(s12, s11, s22)
        if s12.shape != shape:
            s12 = s12.broadcast_to(shape).clone()
        # A negative variance is impossible; clamping keeps 1 + 2 s >= 1 so nothing below can divide by zero.
        inv1 = torch.rsqrt(torch.add(s11.clamp(min=0), 0.5)).mul_(math.sqrt(0.5))  # 1 / sqrt(1 + 2 s11)
        inv2 = torch.rsqrt(torch.add(s22.clamp(min=0), 0.5)).mul_(math.sqrt(0.5))
        r = s12
        r.mul_(inv1 * 2.0).mul_(inv2).clamp_(-1.0, 1.0)
        # The same operations run whether or not Sdot is wanted, so diag_map and kernel_map agree on identical
        # points. |r| < 1 in exact arithmetic; the floor keeps 1 / sqrt(1 - r^2) finite where rounding reaches 1.
        root, inverse = _sqrt_one_minus_square(r)
        dot = None
        if need_dot:
            dot = torch.clamp(root, min=torch.finfo(r.dtype).tiny, out=inverse).reciprocal_()
            dot.mul_(inv1 * (4.0 / math.pi)).mul_(inv2)
        value = _elementwise.asin(r, out=r).mul_(2.0 / math.pi)  # over r: s12's storage
        return value, dot


class GELU(Activation):
    """phi(s) = s Phi(s), the exact Gaussian error linear unit (Hendrycks & Gimpel 2016), in closed form.

    From Tsuchida et al. (2021) (also neural-tangents' `stax.Gelu`), rewritten in r = S12 / sqrt(Q),
    Q = (1 + S11)(1 + S22), w = sqrt((1 - r)(1 + r)) and P = S11 S22:

        S_new = S12 (1/4 + arcsin(r) / (2 pi)) + (r^2 + P w^2) / (2 pi sqrt(Q) w),
        Sdot  = 1/4 + arcsin(r) / (2 pi) + r (3 + S11 + S22 + r^2 / w^2) / (2 pi Q w).

    Sdot is dS_new / dS12 (Price's theorem); the form above has no cancelling terms. In exact arithmetic
    w^2 >= (1 + S11 + S22) / Q > 0; it is floored there against rounding.
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        cdf = 0.5 * (1.0 + torch.erf(x * math.sqrt(0.5)))
        return cdf + x * torch.exp(-0.5 * x * x) * _INV_SQRT_2PI

    def kernel_map(
        self, s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, *, need_dot: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shape = _quadrature.broadcast_shape(s12, s11, s22)
        s11 = s11.clamp(min=0)
        s22 = s22.clamp(min=0)
        inv1 = torch.rsqrt(1.0 + s11)  # 1 / sqrt(1 + S11)
        inv2 = torch.rsqrt(1.0 + s22)
        inv_q = (inv1 * inv1) * (inv2 * inv2)  # 1 / Q
        r = (s12 * inv1 * inv2).clamp_(-1.0, 1.0)
        s12c = r / (inv1 * inv2)  # S12 consistent with the clamped r
        w2 = (1.0 - r) * (1.0 + r)
        torch.maximum(w2, (1.0 + s11 + s22) * inv_q, out=w2)
        w = torch.sqrt(w2)
        half_angle = _elementwise.asin(r, out=torch.empty_like(r)).mul_(0.5 / math.pi).add_(0.25)
        value = s12c * half_angle
        value += (r * r + (s11 * s22) * w2) * (inv1 * inv2) / (2.0 * math.pi * w)
        if s12.shape == shape:
            s12.copy_(value)
            value = s12
        if not need_dot:
            return value, None
        dot = half_angle.add_(r * (3.0 + s11 + s22 + r * r / w2) * inv_q / (2.0 * math.pi * w))
        return value, dot


# ------------------------------------------------------------------------------------------------------------
# By quadrature
# ------------------------------------------------------------------------------------------------------------
class _Quadrature(Activation):
    """Kernel maps by quadrature over the bivariate Gaussian (`_quadrature.bivariate_expectations`).

    Accuracy: the error relative to sqrt(E[phi(u)^2] E[phi(v)^2]) (and the same with phi' for Sdot) is below
    `tolerance` (default 1e-8) at every variance from 0 to 1e4 and beyond, for activations that vary on a unit
    scale: the rule's size follows from the variances of each call (Gauss-Hermite of order 8 to 24 for standard
    deviations up to 0.3, then a sinh-mapped composite Gauss-Legendre rule whose panels grow like log of the
    standard deviation), each call estimates its own error on a few entries against a rule twice as fine, refines
    where needed, and warns (`QuadratureAccuracyWarning`) when the tolerance still cannot be met. `order` fixes an
    `order`-point Gauss-Hermite rule per dimension instead (fast, but accurate only at small variances: no
    refinement, the check and warning remain). Cost: about
    (points per dimension)^2 evaluations of phi and phi' per entry: 64 at variances up to 1e-3, 576 up to 0.09,
    1600 at variances of order 1, 10^4 at 1e4; temporaries stay within ~16 MB per chunk whatever the tile size.
    """

    def __init__(self, order: int | None = None, tolerance: float = _quadrature.DEFAULT_TOLERANCE) -> None:
        self.order = None if order is None else check_int(order, "order", minimum=2)
        self.tolerance = check_real(tolerance, "tolerance", minimum=0.0, strict=True)

    def _value_and_derivative(
        self, x: torch.Tensor, need_dot: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.fn(x), (self.derivative(x) if need_dot else None)

    def kernel_map(
        self, s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, *, need_dot: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return _quadrature.bivariate_expectations(
            self._value_and_derivative,
            s12,
            s11,
            s22,
            order=self.order,
            need_dot=need_dot,
            tolerance=self.tolerance,
            name=repr(self),
        )

    def _moments(self, variance: float) -> tuple[float, float]:
        # One-dimensional expectations are cheap: a fine composite rule, accurate at any variance.
        value = _quadrature.univariate_expectation(lambda x: self.fn(x) ** 2, variance)
        slope = _quadrature.univariate_expectation(lambda x: self.derivative(x) ** 2, variance)
        return value, slope

    def _config(self) -> tuple:
        return (self.order, self.tolerance)

    def _order_repr(self) -> str:
        parts = [] if self.order is None else [f"order={self.order}"]
        if self.tolerance != _quadrature.DEFAULT_TOLERANCE:
            parts.append(f"tolerance={self.tolerance!r}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._order_repr()})"


class Tanh(_Quadrature):
    """phi(s) = tanh(s); kernels by quadrature (no closed form is known)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x)
        return 1.0 - t * t

    def _value_and_derivative(
        self, x: torch.Tensor, need_dot: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = torch.tanh(x)
        return t, (
            torch.addcmul(torch.ones((), dtype=t.dtype, device=t.device), t, t, value=-1.0)
            if need_dot
            else None
        )


class Sigmoid(_Quadrature):
    """phi(s) = 1 / (1 + exp(-s)); kernels by quadrature."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        return s * (1.0 - s)

    def _value_and_derivative(
        self, x: torch.Tensor, need_dot: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = torch.sigmoid(x)
        return s, (s - s * s if need_dot else None)


class Softplus(_Quadrature):
    """phi(s) = log(1 + exp(s)); kernels by quadrature. phi' is the logistic sigmoid."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class Elementwise(_Quadrature):
    """Any elementwise torch function `fn`; kernels by quadrature.

    `derivative` is phi' (a torch callable); when None it comes from autograd, which is exact for elementwise
    functions. `fn` must map a tensor to a tensor of the same shape, elementwise, with torch operations.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        derivative: Callable[[torch.Tensor], torch.Tensor] | None = None,
        order: int | None = None,
        tolerance: float = _quadrature.DEFAULT_TOLERANCE,
    ) -> None:
        super().__init__(order, tolerance)
        _check_elementwise(fn, "fn")
        if derivative is not None:
            _check_elementwise(derivative, "derivative")
        self._fn = fn
        self._derivative = derivative
        self._autograd = _quadrature.autograd_value_and_derivative(fn)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        if self._derivative is not None:
            return self._derivative(x)
        derivative = self._autograd(x, True)[1]
        assert derivative is not None
        return derivative

    def _value_and_derivative(
        self, x: torch.Tensor, need_dot: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._derivative is None:
            return self._autograd(x, need_dot)
        return self._fn(x), (self._derivative(x) if need_dot else None)

    def _config(self) -> tuple:
        return (self.order, self.tolerance, self._fn, self._derivative)

    def __repr__(self) -> str:
        parts = [f"fn={_callable_name(self._fn)}"]
        if self._derivative is not None:
            parts.append(f"derivative={_callable_name(self._derivative)}")
        if self._order_repr():
            parts.append(self._order_repr())
        return f"Elementwise({', '.join(parts)})"


def _callable_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module in ("torch", "torch.nn.functional", "torch.special") else name


def _check_elementwise(fn: object, name: str) -> None:
    """`fn` must be callable and map a float64 tensor to a tensor of the same shape."""
    if not callable(fn):
        raise TypeError(
            f"{name} must be a callable taking and returning a torch.Tensor, got {type(fn).__name__}"
        )
    probe = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64)
    try:
        out = fn(probe)
    except Exception as error:
        raise TypeError(f"{name} must accept a torch.Tensor; calling it on one raised {error!r}") from error
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"{name} must be elementwise (return a tensor of its input's shape (5,)), got {got}")


# ------------------------------------------------------------------------------------------------------------
# Normalisations
# ------------------------------------------------------------------------------------------------------------
def _check_activation(activation: object) -> Activation:
    if not isinstance(activation, Activation):
        raise TypeError(
            "activation must be an ntkit activation such as ntkit.layers.ReLU(), "
            f"got {type(activation).__name__}"
        )
    return activation


def c_sigma(activation: Activation) -> float:
    """c_sigma = 1 / E_{z ~ N(0, 1)}[phi(z)^2]: the weight variance keeping unit pre-activation variance."""
    activation = _check_activation(activation)
    second_moment, _ = activation._moments(1.0)
    if not second_moment > 0.0:
        raise ValueError(f"activation {activation!r} has E[phi(z)^2] = 0, so c_sigma is undefined")
    return 1.0 / second_moment


def edge_of_chaos(activation: Activation, b_std: float = 0.0) -> float:
    """The weight std w_std with w_std^2 E[phi'(z)^2] = 1 at the variance fixed point (the edge of chaos of
    Poole et al. 2016 and Schoenholz et al. 2017; z ~ N(0, q*)).

    The fixed point q* of q = w_std^2 E[phi(sqrt(q) z)^2] + b_std^2 together with the condition
    w_std^2 E[phi'(sqrt(q*) z)^2] = 1 reduces to q = V(q) / D(q) + b_std^2, with V and D the two moments.
    For phi = a s + b |s| the slope D is a^2 + b^2 whatever q, so w_std = 1 / sqrt(a^2 + b^2) exactly (for
    any b_std). With b_std = 0 and phi(0) = 0 the fixed point is q* = 0 and w_std = 1 / |phi'(0)|.
    Otherwise q* is found by bracketing a sign change of q - V(q) / D(q) - b_std^2 on a log grid of
    variances from 1e-8 to 1e3 (Brent's method), and a ValueError says so when there is none.
    """
    activation = _check_activation(activation)
    b_std = check_real(b_std, "b_std", minimum=0.0)
    if isinstance(activation, AbsLinear):
        slope = activation.a**2 + activation.b**2
        if slope == 0.0:
            raise ValueError("activation AbsLinear(a=0, b=0) is identically zero and has no edge of chaos")
        return 1.0 / math.sqrt(slope)

    def slope_at(q: float) -> float:
        _, d = activation._moments(q)
        if not d > 0.0:
            raise ValueError(
                f"activation {activation!r} has E[phi'(z)^2] = 0 at variance {q}: no edge of chaos"
            )
        return d

    phi0 = float(activation.fn(torch.zeros((), dtype=torch.float64)))
    if b_std == 0.0 and phi0 == 0.0:
        return 1.0 / math.sqrt(slope_at(0.0))

    def gap(log_q: float) -> float:
        q = math.exp(log_q)
        v, d = activation._moments(q)
        return q - v / d - b_std * b_std if d > 0.0 else math.nan

    grid = [math.log(1e-8) + i * (math.log(1e3) - math.log(1e-8)) / 88 for i in range(89)]
    values = [gap(g) for g in grid]
    for lo, hi, f_lo, f_hi in zip(grid, grid[1:], values, values[1:], strict=False):
        if f_lo == 0.0:
            return 1.0 / math.sqrt(slope_at(math.exp(lo)))
        if f_lo * f_hi < 0.0:  # False for NaN (a vanishing slope), which is skipped
            log_q = brentq(gap, lo, hi, xtol=1e-13, rtol=1e-13)
            return 1.0 / math.sqrt(slope_at(math.exp(log_q)))
    raise ValueError(
        f"no variance fixed point with w_std^2 E[phi'^2] = 1 was found for {activation!r} with b_std={b_std} "
        "(searched variances 1e-8 to 1e3)"
    )
