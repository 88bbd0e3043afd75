"""gradient_descent (general losses) against scipy's integrator and against the MSE closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.special import softmax

from ntkit.predict import gradient_descent, gradient_descent_mse

DT = torch.float64


def _problem(n=6, m=3, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n + m, 10, generator=g, dtype=DT)
    joint = z @ z.T / 10 + 0.05 * torch.eye(n + m, dtype=DT)
    labels = torch.randint(0, k, (n,), generator=g)
    y = torch.nn.functional.one_hot(labels, k).to(DT)
    f0 = 0.5 * torch.randn(n, k, generator=g, dtype=DT)
    f0_test = 0.5 * torch.randn(m, k, generator=g, dtype=DT)
    return joint[:n, :n].contiguous(), joint[n:, :n].contiguous(), y, f0, f0_test


def test_cross_entropy_matches_scipy_integration():
    k_tt, k_st, y, f0, f0_test = _problem()
    n, k = y.shape
    lr = 2.0
    driver = np.concatenate([k_tt.numpy(), k_st.numpy()])
    y_np = y.numpy()

    def rhs(_, state):
        f = state.reshape(-1, k)
        grad = (softmax(f[:n], axis=1) - y_np) / n  # d/df of the mean cross-entropy (rows of y sum to 1)
        return (-lr * driver @ grad).ravel()

    times = [0.0, 1.0, 5.0, 30.0, 200.0]
    start = np.concatenate([f0.numpy(), f0_test.numpy()]).ravel()
    sol = solve_ivp(rhs, (0, times[-1]), start, method="DOP853", t_eval=times, rtol=1e-12, atol=1e-12)
    reference = torch.from_numpy(sol.y.T.reshape(len(times), -1, k))

    predict = gradient_descent("cross_entropy", k_tt, y, learning_rate=lr)
    train, test = predict(torch.tensor(times, dtype=DT), f0, f0_test, k_st)
    # Both integrators run at tolerances <= 1e-9 (observed gap ~1e-9); the outputs are O(1) to O(10).
    torch.testing.assert_close(train, reference[:, :n], rtol=0, atol=1e-8)
    torch.testing.assert_close(test, reference[:, n:], rtol=0, atol=1e-8)
    assert float((train[-1] - f0).abs().max()) > 1.0  # it trained
    # Unsorted times and a scalar time give the same values.
    scalar = predict(30.0, f0)
    torch.testing.assert_close(scalar, train[3], rtol=0, atol=1e-7)
    shuffled = predict(torch.tensor([200.0, 1.0], dtype=DT), f0)
    torch.testing.assert_close(shuffled, train[[4, 1]], rtol=0, atol=1e-7)


def test_cross_entropy_matches_a_fine_explicit_integration():
    """A second, cruder route: 20000 forward-Euler steps of the same ODE (first order, error ~ h)."""
    k_tt, k_st, y, f0, f0_test = _problem(seed=1)
    n = y.shape[0]
    lr, horizon, count = 1.0, 10.0, 20000
    h = horizon / count
    u, v = f0.clone(), f0_test.clone()
    for _ in range(count):
        grad = (torch.softmax(u, dim=1) - y) / n
        u, v = u - h * lr * k_tt @ grad, v - h * lr * k_st @ grad
    train, test = gradient_descent("cross_entropy", k_tt, y, learning_rate=lr)(horizon, f0, f0_test, k_st)
    # Euler's global error is O(h) ~ 5e-4 times the solution's curvature scale (small here).
    torch.testing.assert_close(train, u, rtol=0, atol=1e-4)
    torch.testing.assert_close(test, v, rtol=0, atol=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_through_the_ode_equals_the_closed_form(reduction):
    k_tt, k_st, y, f0, f0_test = _problem(seed=2)
    times = torch.tensor([0.0, 0.5, 4.0, 25.0], dtype=DT)
    ode = gradient_descent("mse", k_tt, y, learning_rate=0.8, reduction=reduction)(times, f0, f0_test, k_st)
    closed = gradient_descent_mse(k_tt, y, learning_rate=0.8, reduction=reduction)(times, f0, f0_test, k_st)
    for a, b in zip(ode, closed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)  # rtol 1e-9 integration


def test_callable_loss_and_one_dimensional_targets():
    k_tt, _, y, f0, _ = _problem(seed=3)
    target = y[:, 0]

    def half_squares(f, t):
        return 0.5 * ((f - t) ** 2).sum()

    ode = gradient_descent(half_squares, k_tt, target)(3.0, f0[:, 0])
    closed = gradient_descent_mse(k_tt, target, reduction="sum")(3.0, f0[:, 0])
    assert ode.shape == target.shape
    torch.testing.assert_close(ode, closed, rtol=0, atol=1e-7)


def test_float32_results_stay_float32():
    k_tt, _, y, f0, _ = _problem(seed=4)
    out = gradient_descent("cross_entropy", k_tt.float(), y.float())(5.0, f0.float())
    ref = gradient_descent("cross_entropy", k_tt, y)(5.0, f0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)


def test_bad_input_is_named():
    k_tt, k_st, y, f0, _ = _problem(seed=5)
    with pytest.raises(ValueError, match="loss"):
        gradient_descent("hinge", k_tt, y)
    with pytest.raises(TypeError, match="loss"):
        gradient_descent(3, k_tt, y)
    with pytest.raises(ValueError, match="y_train"):
        gradient_descent("cross_entropy", k_tt, y[:-1])
    predict = gradient_descent("cross_entropy", k_tt, y)
    with pytest.raises(ValueError, match="t must be finite"):
        predict(None, f0)
    with pytest.raises(ValueError, match="t must be >= 0"):
        predict(-1.0, f0)
    with pytest.raises(ValueError, match="k_test_train"):
        predict(1.0, f0, None, k_st[:, :-1])
    with pytest.raises(ValueError, match="loss must return a scalar"):
        gradient_descent(lambda f, t: f - t, k_tt, y)(1.0, f0)


@pytest.mark.parametrize("columns", [None, 1])
def test_cross_entropy_rejects_labels_without_class_columns(columns):
    """1-D (or one-column) labels would make log_softmax run across the training points."""
    k_tt, _, y, _, _ = _problem(seed=6)
    labels = y[:, 0] if columns is None else y[:, :1]
    with pytest.raises(ValueError, match="y_train"):
        gradient_descent("cross_entropy", k_tt, labels)
    # the same labels stay valid for the squared loss
    gradient_descent("mse", k_tt, labels)


def test_a_non_finite_loss_fails_instead_of_returning_nan():
    """A NaN error estimate shrinks the step until it underflows; that must raise, not accept the step."""
    k_tt, _, y, f0, _ = _problem(seed=7)

    def broken(f, t):
        return torch.sqrt(f - 100.0).sum()  # NaN everywhere near f = 0, and so is its gradient

    with pytest.raises(RuntimeError, match=r"integration failed.*step size underflow.*non-finite"):
        gradient_descent(broken, k_tt, y)(1.0, f0)
