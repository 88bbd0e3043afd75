"""Activation kernel maps against independent routes: quadrature, scipy adaptive integration, Monte Carlo."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import roots_hermitenorm

from ntkit.layers import QuadratureAccuracyWarning, _quadrature
from ntkit.layers.activations import (
    GELU,
    Abs,
    AbsLinear,
    Activation,
    Elementwise,
    Erf,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softplus,
    Tanh,
    c_sigma,
    edge_of_chaos,
)

PIECEWISE_LINEAR = [ReLU(), Abs(), LeakyReLU(0.2), AbsLinear(0.3, -1.7), Identity()]
SMOOTH_CLOSED = [Erf(), GELU()]
QUADRATURE = [Tanh(), Sigmoid(), Softplus(), Elementwise(torch.sin, torch.cos, order=48)]
ALL = PIECEWISE_LINEAR + SMOOTH_CLOSED + QUADRATURE
ids = [repr(a) for a in ALL]


def _grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows x columns of variances; correlations -1, near -1, 0, near 1, exactly 1; zero variances."""
    s11 = torch.tensor([[0.7], [1.3], [0.0], [0.25]], dtype=torch.float64)
    s22 = torch.tensor([[1.1, 0.4, 0.0, 0.9, 1.4]], dtype=torch.float64)
    rho = torch.tensor(
        [
            [1.0, -1.0, 0.3, 1.0 - 1e-9, -(1.0 - 1e-7)],
            [0.0, 0.999, -0.5, 1.0, 0.8],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [-0.2, 0.6, 0.0, 1.0 - 1e-13, -1.0],
        ],
        dtype=torch.float64,
    )
    return rho * torch.sqrt(s11 * s22), s11, s22


# --- independent reference: Gauss-Hermite in numpy, conditional parametrization
# -------------------------------
def _reference_expectations(act: Activation, s12, s11, s22, order: int = 160):
    """E[f(u) f(v)], E[f'(u) f'(v)] with u = sqrt(s11) z1, v = sqrt(s22) (rho z1 + sqrt(1 - rho^2) z2).

    A different parametrization and code path from ntkit's symmetric rule; for the smooth activations tested
    with it, accurate to ~1e-12 at this order for variances <= 1.4 (checked by raising the order while
    writing).
    """
    nodes, weights = roots_hermitenorm(order)
    weights = weights / weights.sum()
    shape = np.broadcast_shapes(np.shape(s12), np.shape(s11), np.shape(s22))
    s12, s11, s22 = (np.broadcast_to(np.asarray(t, dtype=np.float64), shape).ravel() for t in (s12, s11, s22))
    norm = np.sqrt(s11 * s22)
    rho = np.where(norm > 0, np.clip(s12 / np.where(norm > 0, norm, 1.0), -1, 1), 0.0)
    rc = np.sqrt(np.clip((1 - rho) * (1 + rho), 0, None))
    z1 = nodes[None, :, None]
    z2 = nodes[None, None, :]
    u = torch.as_tensor(np.sqrt(s11)[:, None, None] * z1 + 0.0 * z2)
    v = torch.as_tensor(np.sqrt(s22)[:, None, None] * (rho[:, None, None] * z1 + rc[:, None, None] * z2))
    w2 = torch.as_tensor((weights[:, None] * weights[None, :]).ravel())
    n = len(s12)
    with torch.no_grad():
        values = (act.fn(u) * act.fn(v)).reshape(n, -1) @ w2
        dots = (act.derivative(u) * act.derivative(v)).reshape(n, -1) @ w2
    return values.numpy().reshape(shape), dots.numpy().reshape(shape)


def _abs_linear_reference(act: AbsLinear, s12, s11, s22):
    """Polar coordinates: for positively homogeneous phi, E[phi(u) phi(v)] = E[r^2] E_angle[...], E[r^2] = 2.

    u = sqrt(s11) r cos(t), v = sqrt(s22) r cos(t - theta); the angular integrals are done by scipy.quad with
    the
    kinks as break points (an independent route from the arc-cosine closed form).
    """
    values = np.empty(np.shape(s12))
    dots = np.empty(np.shape(s12))
    a, b = act.a, act.b

    def phi(x):
        return a * x + b * abs(x)

    def dphi(x):
        return a + b * np.sign(x)

    for index in np.ndindex(values.shape):
        x11, x22, x12 = float(s11[index[0], 0]), float(s22[0, index[1]]), float(s12[index])
        norm = math.sqrt(x11 * x22)
        theta = math.acos(min(1.0, max(-1.0, x12 / norm))) if norm > 0 else math.pi / 2
        kinks = sorted({(k * math.pi / 2 + off) % (2 * math.pi) for k in (1, 3) for off in (0.0, theta)})
        values[index] = (
            2
            * integrate.quad(
                lambda t, th=theta, p=x11, q=x22: (
                    phi(math.sqrt(p) * math.cos(t)) * phi(math.sqrt(q) * math.cos(t - th))
                ),
                0,
                2 * math.pi,
                points=kinks,
                epsabs=1e-13,
                epsrel=1e-13,
                limit=200,
            )[0]
            / (2 * math.pi)
        )
        # phi' is 0-homogeneous and piecewise constant in the angle: exact as a sum over the arcs between
        # kinks (at zero variance phi'(0) = a + b sign(0) = a, the closed form's theta = pi/2 convention).
        cuts = [0.0, *kinks, 2 * math.pi]
        dots[index] = sum(
            (hi - lo)
            * dphi(math.sqrt(x11) * math.cos(0.5 * (lo + hi)))
            * dphi(math.sqrt(x22) * math.cos(0.5 * (lo + hi) - theta))
            for lo, hi in itertools.pairwise(cuts)
        ) / (2 * math.pi)
    return values, dots


def _scale(act: Activation, s11, s22):
    """sqrt(E[phi(u)^2] E[phi(v)^2]) and the same for phi': the natural scale of the kernel entries."""
    _, d11 = act.kernel_map(s11.clone(), s11, s11)
    _, d22 = act.kernel_map(s22.clone(), s22, s22)
    v = torch.sqrt(act.diag_map(s11) * act.diag_map(s22))
    d = torch.sqrt(d11 * d22)
    # zero-variance rows make the scale 0 for phi(0) = 0: fall back to 1 (absolute error) there
    return torch.where(v > 0, v, 1.0), torch.where(d > 0, d, 1.0)


@pytest.mark.parametrize("act", PIECEWISE_LINEAR, ids=[repr(a) for a in PIECEWISE_LINEAR])
def test_abs_linear_closed_form_matches_angular_integration(act):
    s12, s11, s22 = _grid()
    value, dot = act.kernel_map(s12.clone(), s11, s22)
    ref_value, ref_dot = _abs_linear_reference(act, s12.numpy(), s11.numpy(), s22.numpy())
    # The adaptive integrals are accurate to ~1e-13; the closed form to rounding. Near rho = +-1 an ulp of
    # rho moves arcsin(rho) by eps / sqrt(1 - rho^2) (~5e-12 at 1 - 1e-9; rho = 1 - 1e-13 is not snapped,
    # only correlations within 32 eps of +-1 are): 1e-10 relative to the scale is ample and still tight.
    vs, ds = _scale(act, s11, s22)
    np.testing.assert_allclose((value / vs).numpy(), ref_value / vs.numpy(), atol=1e-10)
    np.testing.assert_allclose((dot / ds).numpy(), ref_dot / ds.numpy(), atol=1e-10)


@pytest.mark.parametrize("act", SMOOTH_CLOSED + QUADRATURE, ids=[repr(a) for a in SMOOTH_CLOSED + QUADRATURE])
def test_smooth_kernels_match_high_order_quadrature(act):
    s12, s11, s22 = _grid()
    value, dot = act.kernel_map(s12.clone(), s11, s22)
    ref_value, ref_dot = _reference_expectations(act, s12.numpy(), s11.numpy(), s22.numpy())
    vs, ds = _scale(act, s11, s22)
    # Closed forms: exact up to rounding (the reference is good to ~1e-12 here). Quadrature activations: the
    # documented 1e-6 relative accuracy at default order for variances <= 1.5 (the grid's largest is 1.4).
    tol = 1e-11 if act in SMOOTH_CLOSED else 1e-6
    np.testing.assert_allclose((value / vs).numpy(), ref_value / vs.numpy(), atol=tol)
    np.testing.assert_allclose((dot / ds).numpy(), ref_dot / ds.numpy(), atol=tol)


def _dblquad(f, s11, s12, s22):
    """E[f(u, v)] by scipy's adaptive 2-D integration over the standard normal plane, |z| < 9."""
    norm = math.sqrt(s11 * s22)
    rho = s12 / norm
    rc = math.sqrt((1 - rho) * (1 + rho))

    def integrand(z2, z1):
        u = math.sqrt(s11) * z1
        v = math.sqrt(s22) * (rho * z1 + rc * z2)
        return f(u, v) * math.exp(-0.5 * (z1 * z1 + z2 * z2)) / (2 * math.pi)

    return integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=1e-11, epsrel=1e-10)[0]


@pytest.mark.parametrize(
    ("act", "fn", "dfn"),
    [
        (Tanh(), math.tanh, lambda x: 1 - math.tanh(x) ** 2),
        (Sigmoid(), lambda x: 1 / (1 + math.exp(-x)), lambda x: math.exp(-x) / (1 + math.exp(-x)) ** 2),
        (Softplus(), lambda x: math.log1p(math.exp(x)), lambda x: 1 / (1 + math.exp(-x))),
        (
            GELU(),
            lambda x: x * 0.5 * math.erfc(-x / math.sqrt(2)),
            lambda x: 0.5 * math.erfc(-x / math.sqrt(2)) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi),
        ),
    ],
    ids=["tanh", "sigmoid", "softplus", "gelu"],
)
def test_against_scipy_adaptive_integration(act, fn, dfn):
    # Two points (variances <= 1.5, the documented range), to 1e-6 relative to the scale of the entries.
    for s11, s22, rho in [(1.5, 0.8, 0.6), (0.5, 1.2, -0.9)]:
        s12 = rho * math.sqrt(s11 * s22)
        t11 = torch.tensor([[s11]], dtype=torch.float64)
        t22 = torch.tensor([[s22]], dtype=torch.float64)
        value, dot = act.kernel_map(torch.tensor([[s12]], dtype=torch.float64), t11, t22)
        vs, ds = _scale(act, t11, t22)
        ref = _dblquad(lambda u, v: fn(u) * fn(v), s11, s12, s22)
        ref_dot = _dblquad(lambda u, v: dfn(u) * dfn(v), s11, s12, s22)
        assert abs(float(value) - ref) <= 1e-6 * float(vs)
        assert abs(float(dot) - ref_dot) <= 1e-6 * float(ds)


def test_default_quadrature_order_meets_1e6_against_a_much_higher_order():
    variances = torch.tensor([0.05, 0.3, 0.8, 1.5], dtype=torch.float64)
    s11 = variances[:, None]
    s22 = variances[None, :].flip(1)
    rho = torch.tensor([0.95, -0.4, 0.0, 1.0], dtype=torch.float64)[None, :].expand(4, 4)
    s12 = rho * torch.sqrt(s11 * s22)
    for cls in (Tanh, Sigmoid, Softplus):
        value, dot = cls().kernel_map(s12.clone(), s11, s22)
        ref_value, ref_dot = cls(order=320).kernel_map(s12.clone(), s11, s22)
        vs, ds = _scale(cls(order=320), s11, s22)
        assert float(((value - ref_value).abs() / vs).max()) < 1e-6, cls
        assert float(((dot - ref_dot).abs() / ds).max()) < 1e-6, cls


# --- Monte Carlo over Gaussian samples ---------------------------------------------------------------------
@pytest.mark.parametrize("act", ALL, ids=ids)
def test_against_monte_carlo_over_gaussian_samples(act):
    generator = torch.Generator().manual_seed(1)
    n = 200_000
    z1 = torch.randn(n, generator=generator, dtype=torch.float64)
    z2 = torch.randn(n, generator=generator, dtype=torch.float64)
    cases = [  # (s11, s22, rho): random, near +-1, exactly 1, zero variance
        (0.9, 1.2, 0.37),
        (0.4, 1.3, -0.8),
        (1.0, 1.0, 1.0),
        (0.6, 0.6, 0.999999),
        (1.1, 0.5, -0.999999),
        (0.0, 0.8, 0.0),
        (0.0, 0.0, 0.0),
        (0.8, 0.8, -1.0),
    ]
    for s11, s22, rho in cases:
        u = math.sqrt(s11) * z1
        v = math.sqrt(s22) * (rho * z1 + math.sqrt(max(0.0, (1 - rho) * (1 + rho))) * z2)
        t11 = torch.tensor([[s11]], dtype=torch.float64)
        t22 = torch.tensor([[s22]], dtype=torch.float64)
        s12 = torch.tensor([[rho * math.sqrt(s11 * s22)]], dtype=torch.float64)
        value, dot = act.kernel_map(s12, t11, t22)
        checks = [(value, act.fn(u) * act.fn(v))]
        if min(s11, s22) > 0 or not isinstance(act, AbsLinear) or isinstance(act, Identity):
            # phi' of a kinked activation is undefined at a point of zero variance (u = 0 always); the closed
            # form's convention theta = pi/2 is the limit s11 -> 0+, checked in test_zero_variance_values.
            checks.append((dot, act.derivative(u) * act.derivative(v)))
        for got, samples in checks:
            mean = float(samples.mean())
            se = float(samples.std()) / math.sqrt(n)
            # 5 standard errors (a false alarm has probability ~6e-7 per check) plus rounding slack for the
            # degenerate cases where the samples are constant (se = 0).
            assert abs(float(got) - mean) <= 5 * se + 1e-12 * (1 + abs(mean)), (
                act,
                s11,
                s22,
                rho,
                float(got),
                mean,
            )


# --- structural properties ---------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ALL, ids=ids)
def test_symmetric_under_swapping_the_points(act):
    s12, s11, s22 = _grid()
    value, dot = act.kernel_map(s12.clone(), s11, s22)
    value_t, dot_t = act.kernel_map(s12.T.clone(), s22.T, s11.T)
    # Same formula with the roles swapped: equal up to rounding in the order of operations. At
    # rho = 1 - 1e-9 an ulp of rho moves arcsin(rho) by eps / sqrt(1 - rho^2) ~ 5e-12 (the kink's
    # ill-conditioning), hence rtol 1e-11; near rho = -1 the same ulp moves Sdot (of order 1) by ~1e-13
    # absolutely, hence atol 1e-12.
    torch.testing.assert_close(value, value_t.T, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(dot, dot_t.T, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("act", ALL, ids=ids)
def test_diag_map_equals_kernel_map_on_identical_points(act):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(14, 9, generator=generator, dtype=torch.float64) * 0.4
    x[5] = 0.0  # a zero-norm input
    x[7] = x[3]  # a duplicated row
    s = x @ x.T / 9
    diag = (x * x).sum(1) / 9
    s.diagonal().copy_(diag)  # as the tiling does: identical inputs see exactly their own variance
    value, _ = act.kernel_map(s.clone(), diag[:, None], diag[None, :])
    expected = act.diag_map(diag)
    if isinstance(act, AbsLinear):
        # Correlation snapped to exactly 1 and the same operations: bit for bit.
        assert torch.equal(value.diagonal(), expected)
        assert torch.equal(value[7, 3], value[3, 3])
    else:
        # Transcendental functions may round differently in vectorised and scalar code paths: a few ulps.
        torch.testing.assert_close(value.diagonal(), expected, rtol=4e-15, atol=0)
    assert torch.isfinite(value).all()
    # diag_map takes any shape and leaves its input alone
    grid = diag[:12].reshape(2, 3, 2).clone()
    before = grid.clone()
    out = act.diag_map(grid)
    assert out.shape == grid.shape and torch.equal(grid, before)


@pytest.mark.parametrize("act", PIECEWISE_LINEAR[:-1], ids=[repr(a) for a in PIECEWISE_LINEAR[:-1]])
def test_duplicated_inputs_across_tiles_match_the_diagonal_exactly(act):
    # (Identity is excluded: it passes S12 through unchanged, which is exact, and has no angle to snap.)
    # Duplicated rows whose Gram entry comes from a long matmul (d = 4000) rather than from the diagonal:
    # the dot products differ from the squared norms by rounding (17 eps here), which the snap absorbs, so
    # the duplicate pair gets exactly the diagonal's values (theta = 0), for S_new and for Sdot.
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(40, 4000, generator=generator, dtype=torch.float64)
    x2 = torch.cat([x[20:], x[:20]])  # rows 0..19 of x reappear as rows 20..39 of x2
    s = x @ x2.T / 4000
    d1 = (x * x).sum(1) / 4000
    d2 = (x2 * x2).sum(1) / 4000
    value, dot = act.kernel_map(s, d1[:, None], d2[None, :])
    diag_value = act.diag_map(d1)
    _, diag_dot = act.kernel_map(d1.clone(), d1, d1)
    assert torch.equal(value[torch.arange(20), torch.arange(20) + 20], diag_value[:20])
    assert torch.equal(dot[torch.arange(20), torch.arange(20) + 20], diag_dot[:20])


@pytest.mark.parametrize("act", ALL, ids=ids)
def test_kernel_map_leaves_variances_alone_and_keeps_dtype(act):
    s12, s11, s22 = _grid()
    v11, v22 = s11.clone(), s22.clone()
    ref_value, ref_dot = act.kernel_map(s12.clone(), s11, s22)
    assert torch.equal(s11, v11) and torch.equal(s22, v22)
    assert ref_value.dtype == torch.float64 and ref_dot.dtype == torch.float64
    value, dot = act.kernel_map(s12.float(), s11.float(), s22.float())
    assert value.dtype == torch.float32 and dot.dtype == torch.float32
    assert value.shape == s12.shape and dot.shape == s12.shape
    # float32 agrees with float64 to float32 accuracy, except that near rho = +-1 the square root
    # sqrt(1 - rho^2) amplifies the rounding of rho to ~sqrt(eps32) ~ 3e-4 of the scale.
    vs, _ = _scale(act, s11, s22)
    assert float(((value.double() - ref_value).abs() / vs).max()) < 1e-3
    value_only, none = act.kernel_map(s12.clone(), s11, s22, need_dot=False)
    assert none is None
    torch.testing.assert_close(value_only, ref_value, rtol=0, atol=0)


@pytest.mark.parametrize("act", ALL, ids=ids)
def test_extreme_inputs_give_finite_values(act):
    big = torch.tensor([[1e12], [1e-30], [0.0]], dtype=torch.float64)
    s22 = torch.tensor([[1e12, 1e-30, 0.0]], dtype=torch.float64)
    s12 = torch.sqrt(big * s22) * (
        1 + 1e-15
    )  # slightly above the Cauchy-Schwarz bound, as rounding can make it
    if isinstance(act, (Tanh, Sigmoid, Softplus, Elementwise)):
        big = big.clamp(max=1e4)
        s22 = s22.clamp(max=1e4)
        s12 = torch.sqrt(big * s22) * (1 + 1e-15)
    value, dot = act.kernel_map(s12.clone(), big, s22)
    assert torch.isfinite(value).all() and torch.isfinite(dot).all()


def test_zero_variance_values():
    # u = 0 exactly: E[phi(0) phi(v)] = phi(0) E[phi(v)] and E[phi'(0) phi'(v)] = phi'(0) E[phi'(v)].
    zero = torch.zeros(1, 1, dtype=torch.float64)
    s22 = torch.tensor([[0.7]], dtype=torch.float64)
    z = torch.as_tensor(roots_hermitenorm(200)[0])
    w = torch.as_tensor(roots_hermitenorm(200)[1])
    w = w / w.sum()
    for act in [Sigmoid(), Softplus(), Erf(), GELU(), Tanh()]:
        value, dot = act.kernel_map(zero.clone(), zero, s22)
        v = math.sqrt(0.7) * z
        f0 = act.fn(torch.zeros((), dtype=torch.float64))
        d0 = act.derivative(torch.zeros((), dtype=torch.float64))
        torch.testing.assert_close(value[0, 0], f0 * (act.fn(v) @ w), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(dot[0, 0], d0 * (act.derivative(v) @ w), rtol=1e-9, atol=1e-12)
    # Kinked activations: zero variance is the limit of a vanishing one (theta = pi/2, finite, no NaN).
    tiny = torch.full((1, 1), 1e-300, dtype=torch.float64)
    for act in PIECEWISE_LINEAR:
        value, dot = act.kernel_map(zero.clone(), zero, s22)
        limit_value, limit_dot = act.kernel_map(torch.zeros(1, 1, dtype=torch.float64), tiny, s22)
        torch.testing.assert_close(value, limit_value, rtol=0, atol=1e-140)
        torch.testing.assert_close(dot, limit_dot, rtol=1e-15, atol=0)
    value, dot = ReLU().kernel_map(zero.clone(), zero, s22)
    assert float(value) == 0.0 and float(dot) == pytest.approx(0.25, rel=1e-15)  # (pi - pi/2) / (2 pi)


def test_elementwise_tanh_equals_tanh():
    s12, s11, s22 = _grid()
    value, dot = Elementwise(torch.tanh).kernel_map(s12.clone(), s11, s22)
    ref_value, ref_dot = Tanh().kernel_map(s12.clone(), s11, s22)
    # Autograd's derivative of tanh is 1 - tanh^2 computed from the saved output, as Tanh does.
    torch.testing.assert_close(value, ref_value, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(dot, ref_dot, rtol=1e-14, atol=1e-16)
    given = Elementwise(torch.tanh, derivative=lambda x: 1 - torch.tanh(x) ** 2)
    torch.testing.assert_close(given.kernel_map(s12.clone(), s11, s22)[1], ref_dot, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("act", ALL, ids=ids)
def test_fn_module_and_derivative(act):
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    x = x[x != 0].requires_grad_(True)  # phi' of the piecewise-linear ones is defined away from 0
    y = act.fn(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(act.derivative(x.detach()), grad, rtol=1e-12, atol=1e-14)
    module = act.module()
    assert isinstance(module, torch.nn.Module)
    torch.testing.assert_close(module(x.detach()), y.detach(), rtol=0, atol=0)
    assert repr(act) in repr(module)


def _homogeneous_reference(phi, s12, s11, s22, nodes: int = 24):
    """E[phi(u) phi(v)] and E[phi'(u) phi'(v)] for a positively 1-homogeneous phi given as a torch function.

    (u, v) = L z with L the Cholesky factor of [[s11, s12], [s12, s22]] (written out, so that rho = +-1 and
    zero variances work) and z standard normal in the plane. In polar coordinates z = r (cos t, sin t), r and t
    are independent, E[r^2] = 2 and t is uniform, so E[phi(u) phi(v)] = 2 E_t[phi(L1 . e_t) phi(L2 . e_t)] and
    E[phi'(u) phi'(v)] = E_t[phi'(L1 . e_t) phi'(L2 . e_t)]. The angular integrals are done by Gauss-Legendre
    between the angles where u or v changes sign (found from L, not from the activation's parameters); on
    each arc the integrand is a trigonometric polynomial of degree <= 2, which 24 nodes integrate to rounding.
    phi' is torch's autograd derivative of phi (no node lies on a kink). Independent of ntkit's a, b, fn,
    derivative and arc-cosine closed form.
    """
    x, w = np.polynomial.legendre.leggauss(nodes)
    values = np.empty(np.shape(s12))
    dots = np.empty(np.shape(s12))
    for index in np.ndindex(values.shape):
        x11, x22, x12 = float(s11[index[0], 0]), float(s22[0, index[1]]), float(s12[index])
        l11 = math.sqrt(x11)
        l21 = x12 / l11 if l11 > 0 else 0.0
        l22 = math.sqrt(max(x22 - l21 * l21, 0.0))
        cuts = {0.0, 2 * math.pi}
        for p, q in ((l11, 0.0), (l21, l22)):  # p cos t + q sin t = 0 at t = atan2(-p, q) and that + pi
            if p != 0.0 or q != 0.0:
                t0 = math.atan2(-p, q) % math.pi
                cuts |= {t0, t0 + math.pi}
        cuts = sorted(cuts)
        t = np.concatenate([0.5 * (hi - lo) * x + 0.5 * (hi + lo) for lo, hi in itertools.pairwise(cuts)])
        wt = np.concatenate([0.5 * (hi - lo) * w for lo, hi in itertools.pairwise(cuts)]) / (2 * math.pi)
        u = torch.tensor(l11 * np.cos(t), requires_grad=True)
        v = torch.tensor(l21 * np.cos(t) + l22 * np.sin(t), requires_grad=True)
        fu, fv = phi(u), phi(v)
        (du,) = torch.autograd.grad(fu.sum(), u)
        (dv,) = torch.autograd.grad(fv.sum(), v)
        values[index] = 2 * float(wt @ (fu * fv).detach().numpy())
        dots[index] = float(wt @ (du * dv).numpy())
    return values, dots


@pytest.mark.parametrize(
    ("act", "phi"),
    [
        (ReLU(), torch.relu),
        (Abs(), torch.abs),
        (LeakyReLU(0.1), lambda x: torch.nn.functional.leaky_relu(x, 0.1)),
        (LeakyReLU(-0.6), lambda x: torch.nn.functional.leaky_relu(x, -0.6)),
        (Identity(), lambda x: x * 1.0),
    ],
    ids=["relu", "abs", "leaky_relu_0.1", "leaky_relu_-0.6", "identity"],
)
def test_abs_linear_family_members_match_their_own_functions(act, phi):
    """Each named member of the family against quadrature of torch's own function for it.

    The reference never sees the member's (a, b): a wrong parameter mapping (e.g. LeakyReLU's
    ((1 + alpha) / 2, (1 - alpha) / 2)) fails here, unlike a comparison with AbsLinear(a, b).
    """
    assert isinstance(act, AbsLinear)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    torch.testing.assert_close(act.fn(x), phi(x), rtol=1e-15, atol=0)
    off_kink = x[x != 0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(phi(off_kink).sum(), off_kink)
    torch.testing.assert_close(act.derivative(off_kink.detach()), grad, rtol=1e-15, atol=0)
    s12, s11, s22 = _grid()
    value, dot = act.kernel_map(s12.clone(), s11, s22)
    ref_value, ref_dot = _homogeneous_reference(phi, s12.numpy(), s11.numpy(), s22.numpy())
    # Entries are O(1) (variances <= 1.4, |phi(x)| <= |x|) and the quadrature is exact to ~1e-15 per arc; the
    # value kernel is smooth in rho up to rho = +-1 (measured agreement ~1e-15), so 1e-12. A wrong (a, b), e.g.
    # LeakyReLU(0.1) mapped as slope 0.12, moves entries by ~0.02.
    np.testing.assert_allclose(value.numpy(), ref_value, rtol=0, atol=1e-12)
    # The derivative kernel's arcsin(rho) has slope 1 / sqrt(1 - rho^2) ~ 2e6 at the grid's rho = 1 - 1e-13, so
    # the rounding of rho (and of the reference's kink angle there) costs up to ~1e-8 (measured 1.3e-8): 1e-7.
    # phi'(0) is a convention at zero variance (ntkit: a + b sign(0) = a; torch: its own subgradient), so the
    # derivative kernel is compared where both variances are positive.
    positive = (s11 > 0).numpy() & (s22 > 0).numpy()
    np.testing.assert_allclose(dot.numpy()[positive], ref_dot[positive], rtol=0, atol=1e-7)


def test_reprs():
    assert repr(ReLU()) == "ReLU()"
    assert repr(LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(AbsLinear(1.0, -0.5)) == "AbsLinear(a=1.0, b=-0.5)"
    assert repr(Tanh()) == "Tanh()" and repr(Tanh(order=40)) == "Tanh(order=40)"
    assert repr(Elementwise(torch.tanh)) == "Elementwise(fn=torch.tanh)"
    assert "ReLU()" in repr(ReLU().module())


# --- normalisations ----------------------------------------------------------------------------------------
def _moment(f, q):
    """E[f(sqrt(q) z)] by scipy's adaptive quadrature (independent of ntkit's rules)."""
    s = math.sqrt(q)
    return integrate.quad(
        lambda z: f(s * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
        -12,
        12,
        epsabs=1e-13,
        epsrel=1e-12,
        limit=200,
        points=[0.0],
    )[0]


def test_c_sigma_against_definition():
    funcs = {
        "relu": (ReLU(), lambda x: max(x, 0.0)),
        "erf": (Erf(), math.erf),
        "tanh": (Tanh(), math.tanh),
        "gelu": (GELU(), lambda x: x * 0.5 * math.erfc(-x / math.sqrt(2))),
        "sigmoid": (Sigmoid(), lambda x: 1 / (1 + math.exp(-x))),
    }
    for act, f in funcs.values():
        assert c_sigma(act) == pytest.approx(1 / _moment(lambda x, f=f: f(x) ** 2, 1.0), rel=1e-9)
    assert c_sigma(ReLU()) == pytest.approx(2.0, rel=1e-14)


def test_edge_of_chaos_abs_linear_is_exact():
    for a, b in [(0.5, 0.5), (0.0, 1.0), (0.3, -1.2), (1.0, 0.0)]:
        assert edge_of_chaos(AbsLinear(a, b)) == pytest.approx(1 / math.sqrt(a * a + b * b), rel=1e-15)
    assert edge_of_chaos(ReLU()) == pytest.approx(math.sqrt(2.0), rel=1e-15)


@pytest.mark.parametrize(
    ("act", "f", "df", "b_std"),
    [
        (Erf(), math.erf, lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x), 0.0),
        (Erf(), math.erf, lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x), 0.5),
        (Tanh(), math.tanh, lambda x: 1 - math.tanh(x) ** 2, 0.3),
        (
            Sigmoid(),
            lambda x: 0.5 * (1 + math.tanh(x / 2)),
            lambda x: 0.25 / math.cosh(min(abs(x), 700) / 2) ** 2,
            0.0,
        ),
    ],
    ids=["erf", "erf-bias", "tanh-bias", "sigmoid"],
)
def test_edge_of_chaos_against_definition(act, f, df, b_std):
    w = edge_of_chaos(act, b_std=b_std)
    # Independent check: find q with w^2 E[phi'(sqrt(q) z)^2] = 1 by scipy, then verify it is the variance
    # fixed point q = w^2 E[phi(sqrt(q) z)^2] + b^2 (q = 0 when b = 0 and phi(0) = 0).
    if b_std == 0.0 and f(0.0) == 0.0:
        assert w * w * df(0.0) ** 2 == pytest.approx(1.0, rel=1e-12)
        return
    from scipy.optimize import brentq

    def slope_gap(q):
        return w * w * _moment(lambda x: df(x) ** 2, q) - 1.0

    grid = np.geomspace(1e-6, 1e3, 200)
    signs = [slope_gap(q) for q in grid]
    roots = [
        brentq(slope_gap, lo, hi, xtol=1e-14)
        for lo, hi, a, b in zip(grid, grid[1:], signs, signs[1:], strict=False)
        if a * b < 0
    ]
    assert any(
        q == pytest.approx(w * w * _moment(lambda x: f(x) ** 2, q) + b_std**2, rel=1e-6) for q in roots
    )


# --- bad input ---------------------------------------------------------------------------------------------
def test_argument_validation():
    with pytest.raises(ValueError, match="a must be finite"):
        AbsLinear(float("nan"), 1.0)
    with pytest.raises(ValueError, match="b must be finite"):
        AbsLinear(1.0, float("inf"))
    with pytest.raises(TypeError, match="a must be a real number"):
        AbsLinear("1", 1.0)
    with pytest.raises(TypeError, match="negative_slope"):
        LeakyReLU("0.1")
    with pytest.raises(TypeError, match="negative_slope"):
        LeakyReLU(True)
    with pytest.raises(TypeError, match="fn must be a callable"):
        Elementwise(3.0)
    with pytest.raises(TypeError, match="derivative must be a callable"):
        Elementwise(torch.tanh, derivative="cos")
    with pytest.raises(TypeError, match="fn must be elementwise"):
        Elementwise(lambda x: x.sum())
    with pytest.raises(TypeError, match=r"fn must accept a torch\.Tensor"):
        Elementwise(math.tanh)
    with pytest.raises(ValueError, match="order must be >= 2"):
        Tanh(order=1)
    with pytest.raises(TypeError, match="order must be an integer"):
        Sigmoid(order=3.5)
    with pytest.raises(TypeError, match="activation must be an ntkit activation"):
        edge_of_chaos("relu")
    with pytest.raises(TypeError, match="activation must be an ntkit activation"):
        c_sigma(torch.nn.ReLU())
    with pytest.raises(ValueError, match="b_std must be >= 0"):
        edge_of_chaos(Erf(), b_std=-0.1)
    with pytest.raises(ValueError, match="no variance fixed point"):
        edge_of_chaos(Softplus())


def test_quadrature_chunks_stay_within_the_memory_bound():
    largest = []

    def recording(x, need_dot):
        largest.append(x.numel() * x.element_size())
        return torch.tanh(x), 1 - torch.tanh(x) ** 2

    s12, s11, s22 = _grid()
    budget = 4 * 2**20
    value, dot = _quadrature.bivariate_expectations(recording, s12.clone(), s11, s22, chunk_bytes=budget)
    # each argument array is one of the ~8 (outer x inner) arrays per entry that the bound accounts for
    assert max(largest) <= budget / 8 and len(largest) > 2
    # the same rule in one chunk (the default 16 MB holds the whole grid)
    ref_value, ref_dot = Tanh().kernel_map(s12.clone(), s11, s22)
    torch.testing.assert_close(value, ref_value, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(dot, ref_dot, rtol=1e-14, atol=1e-16)


# --- accuracy at any variance (issue 9, section 1) -----------------------------------------------------------
_VARIANCES = [1e-4, 1e-2, 0.09, 0.3, 1.0, 10.0, 100.0, 1e3, 1e4]
_RHOS = [0.0, 0.3, -0.6, 0.95, -0.99, 0.9999, 1.0 - 1e-7, 1.0, -1.0]


@pytest.mark.parametrize("variance", _VARIANCES)
def test_elementwise_erf_matches_the_closed_form_at_any_variance(variance, recwarn):
    # The quadrature rule (no knowledge of erf) against Williams' closed form, relative to the entries' scale,
    # at the documented tolerance 1e-7, with unequal variances and correlations up to +-1.
    s11 = torch.tensor([[variance], [1.7 * variance]], dtype=torch.float64)
    s22 = torch.tensor([[0.6 * variance, variance]], dtype=torch.float64)
    rho = torch.tensor(_RHOS, dtype=torch.float64)[:, None, None]
    s12 = rho * torch.sqrt(s11 * s22)  # (9, 2, 2)
    value, dot = Elementwise(torch.erf).kernel_map(s12.clone(), s11, s22)
    ref_value, ref_dot = Erf().kernel_map(s12.clone(), s11, s22)
    vs = torch.sqrt(Erf().diag_map(s11) * Erf().diag_map(s22))
    ds = torch.sqrt(Erf().kernel_map(s11.clone(), s11, s11)[1] * Erf().kernel_map(s22.clone(), s22, s22)[1])
    assert float(((value - ref_value).abs() / vs).max()) < 1e-7
    assert float(((dot - ref_dot).abs() / ds).max()) < 1e-7
    assert not [w for w in recwarn if issubclass(w.category, QuadratureAccuracyWarning)]


def _gauss_quad(f, variance, mean=0.0):
    """E[f(mean + sqrt(variance) z)] by scipy's adaptive quadrature in x, with 0 (where activations bend) and the
    Gaussian's centre as break points."""
    sd = math.sqrt(variance)
    if sd == 0.0:
        return f(mean)
    lo, hi = mean - 10 * sd, mean + 10 * sd
    points = sorted({p for p in (0.0, mean) if lo < p < hi})
    return integrate.quad(
        lambda x: f(x) * math.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
        lo,
        hi,
        points=points,
        epsabs=1e-13,
        epsrel=1e-11,
        limit=500,
    )[0]


_SMOOTH = {
    "tanh": (Tanh(), math.tanh, lambda x: 1.0 - math.tanh(x) ** 2),
    "sigmoid": (
        Sigmoid(),
        lambda x: 0.5 * (1.0 + math.tanh(0.5 * x)),
        lambda x: 0.25 * (1.0 - math.tanh(0.5 * x) ** 2),
    ),
    "softplus": (
        Softplus(),
        lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))),
        lambda x: 0.5 * (1.0 + math.tanh(0.5 * x)),
    ),
}


@pytest.mark.parametrize("name", list(_SMOOTH))
@pytest.mark.parametrize("variance", [1e-4, 1.0, 100.0, 1e4])
def test_quadrature_second_moments_at_any_variance_against_scipy(name, variance):
    # rho = 1: E[phi(u)^2] and E[phi'(u)^2]. Tanh at variance 100 had E[phi'^2] wrong by 89% with the fixed
    # Gauss-Hermite rule; the adaptive rule is good to 1e-7 relative.
    act, f, df = _SMOOTH[name]
    s = torch.full((1, 1), variance, dtype=torch.float64)
    value, dot = act.kernel_map(s.clone(), s, s)
    assert float(value) == pytest.approx(_gauss_quad(lambda x: f(x) ** 2, variance), rel=1e-7)
    assert float(dot) == pytest.approx(_gauss_quad(lambda x: df(x) ** 2, variance), rel=1e-7)


@pytest.mark.parametrize(("s11", "s22", "rho"), [(100.0, 60.0, 0.5), (1e3, 1e3, -0.9), (50.0, 80.0, 0.995)])
def test_tanh_bivariate_at_large_variance_against_nested_scipy(s11, s22, rho):
    # E[f(u) f(v)] = E_u[f(u) E[f(v) | u]], v | u ~ N(rho sqrt(s22 / s11) u, s22 (1 - rho^2)), both by scipy.quad.
    act, f, df = _SMOOTH["tanh"]
    slope, cond = rho * math.sqrt(s22 / s11), s22 * (1 - rho * rho)
    ref = _gauss_quad(lambda x: f(x) * _gauss_quad(f, cond, slope * x), s11)
    ref_dot = _gauss_quad(lambda x: df(x) * _gauss_quad(df, cond, slope * x), s11)
    t11 = torch.tensor([[s11]], dtype=torch.float64)
    t22 = torch.tensor([[s22]], dtype=torch.float64)
    value, dot = act.kernel_map(torch.tensor([[rho * math.sqrt(s11 * s22)]], dtype=torch.float64), t11, t22)
    vs, ds = _scale(act, t11, t22)
    assert abs(float(value) - ref) <= 1e-7 * float(vs)
    assert abs(float(dot) - ref_dot) <= 1e-7 * float(ds)


def test_oscillating_function_warns_when_the_tolerance_cannot_be_met():
    # sin at variance 0.5: E[sin u sin v] = exp(-(s11 + s22) / 2) sinh(s12), E[cos u cos v] the same with cosh.
    s11 = torch.tensor([[0.5]], dtype=torch.float64)
    s22 = torch.tensor([[0.4]], dtype=torch.float64)
    s12 = torch.tensor([[0.3]], dtype=torch.float64)
    sin = Elementwise(torch.sin, torch.cos)
    value, dot = sin.kernel_map(s12.clone(), s11, s22)
    assert float(value) == pytest.approx(math.exp(-0.45) * math.sinh(0.3), rel=1e-9)
    assert float(dot) == pytest.approx(math.exp(-0.45) * math.cosh(0.3), rel=1e-9)
    # At variance 1e4 sin oscillates ~60 times per standard deviation: no rule of the sizes used resolves it,
    # and the call says so instead of returning a silently wrong number.
    big = torch.full((1, 1), 1e4, dtype=torch.float64)
    with pytest.warns(QuadratureAccuracyWarning, match=r"Elementwise\(fn=torch.sin"):
        sin.kernel_map(big * 0.5, big, big)
    # A fixed low order is checked the same way.
    with pytest.warns(QuadratureAccuracyWarning, match="order=None"):
        Tanh(order=8).kernel_map(torch.full((1, 1), 5.0, dtype=torch.float64), big * 0 + 10, big * 0 + 10)


def test_tolerance_argument():
    assert repr(Tanh(tolerance=1e-4)) == "Tanh(tolerance=0.0001)"
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        Tanh(tolerance=0.0)
    # A looser tolerance is a different computation for the store's fingerprint.
    assert Tanh(tolerance=1e-4).fingerprint() != Tanh().fingerprint()
