"""gradient_descent_mse and max_learning_rate against independent routes: ODE solver, explicit steps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ntkit.predict import gradient_descent_mse, max_learning_rate

DT = torch.float64


def _problem(n=7, m=4, k=1, seed=0, jitter=0.05):
    """A joint PSD kernel on n train + m test points (random features), labels and initial outputs."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n + m, 12, generator=g, dtype=DT)
    joint = z @ z.T / 12 + jitter * torch.eye(n + m, dtype=DT)
    shape = (n,) if k == 1 else (n, k)
    y = torch.randn(shape, generator=g, dtype=DT)
    f0 = torch.randn(shape, generator=g, dtype=DT)
    f0_test = torch.randn((m,) if k == 1 else (m, k), generator=g, dtype=DT)
    return joint[:n, :n].contiguous(), joint[n:, :n].contiguous(), y, f0, f0_test


def _ode_reference(k_tt, k_st, y, f0, f0_test, rate, times):
    """Integrate du/dt = -c T (u - y), dv/dt = -c T(x, X) (u - y) with scipy's DOP853 at tight tolerances."""
    y2 = y.reshape(y.shape[0], -1).numpy()
    n, k = y2.shape
    driver = np.concatenate([k_tt.numpy(), k_st.numpy()])

    def rhs(_, state):
        u = state.reshape(-1, k)
        return (-rate * driver @ (u[:n] - y2)).ravel()

    start = np.concatenate([f0.reshape(n, k).numpy(), f0_test.reshape(-1, k).numpy()]).ravel()
    sol = solve_ivp(rhs, (0.0, max(times)), start, method="DOP853", t_eval=times, rtol=1e-12, atol=1e-12)
    states = torch.from_numpy(sol.y.T.reshape(len(times), -1, k))
    return states[:, :n], states[:, n:]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_continuous_matches_ode_integration(k, reduction):
    k_tt, k_st, y, f0, f0_test = _problem(k=k)
    lr = 0.7
    entries = y.numel() if reduction == "mean" else 1
    times = [0.0, 0.3, 2.0, 11.0, 40.0]
    ref_train, ref_test = _ode_reference(k_tt, k_st, y, f0, f0_test, lr / entries, times)
    predict = gradient_descent_mse(k_tt, y, learning_rate=lr, reduction=reduction)
    train, test = predict(torch.tensor(times, dtype=DT), f0, f0_test, k_st)
    assert train.shape == (len(times), *y.shape) and test.shape == (len(times), *f0_test.shape)
    # DOP853 at rtol = atol = 1e-12 is accurate to ~1e-10 over this range; the closed form to ~1e-13.
    torch.testing.assert_close(train.reshape(ref_train.shape), ref_train, rtol=0, atol=1e-8)
    torch.testing.assert_close(test.reshape(ref_test.shape), ref_test, rtol=0, atol=1e-8)
    # The dynamics actually moved over this range (so agreement is not agreement of two constants).
    assert float((train[-1] - f0).abs().max()) > 0.1


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_discrete_matches_explicit_steps(k, reduction):
    k_tt, k_st, y, f0, f0_test = _problem(k=k, seed=1)
    entries = y.numel() if reduction == "mean" else 1
    lr = 0.9 * max_learning_rate(k_tt, y_train_size=y.numel(), reduction=reduction)
    predict = gradient_descent_mse(k_tt, y, learning_rate=lr, reduction=reduction, discrete=True)
    u, v = f0.clone(), f0_test.clone()
    expected_train, expected_test = [u.clone()], [v.clone()]
    for _ in range(30):
        residual = u - y
        u = u - lr / entries * (k_tt @ residual)
        v = v - lr / entries * (k_st @ residual)
        expected_train.append(u.clone())
        expected_test.append(v.clone())
    times = torch.arange(31, dtype=DT)
    train, test = predict(times, f0, f0_test, k_st)
    # 30 explicit float64 steps accumulate ~30 * eps * ||T|| relative error; 1e-10 leaves a wide margin.
    torch.testing.assert_close(train, torch.stack(expected_train), rtol=0, atol=1e-10)
    torch.testing.assert_close(test, torch.stack(expected_test), rtol=0, atol=1e-10)


def test_limits_t_zero_and_infinity_are_init_and_kernel_regression():
    k_tt, k_st, y, f0, f0_test = _problem(k=2, seed=2)
    for discrete in (False, True):
        predict = gradient_descent_mse(k_tt, y, learning_rate=1.0, discrete=discrete)
        train0, test0 = predict(0, f0, f0_test, k_st)
        torch.testing.assert_close(train0, f0, rtol=0, atol=1e-13)
        torch.testing.assert_close(test0, f0_test, rtol=0, atol=1e-13)
        for t in (None, math.inf, torch.tensor(math.inf, dtype=DT)):
            train, test = predict(t, f0, f0_test, k_st)
            expected_test = f0_test + k_st @ torch.linalg.solve(k_tt, y - f0)
            # kernel regression by an LU solve: agreement to cond(T) * eps (cond ~ 1e2 here).
            torch.testing.assert_close(train, y, rtol=0, atol=1e-11)
            torch.testing.assert_close(test, expected_test, rtol=0, atol=1e-11)
    # A time axis that mixes finite times and inf.
    predict = gradient_descent_mse(k_tt, y)
    both = predict(torch.tensor([0.0, math.inf], dtype=DT), f0)
    torch.testing.assert_close(both[0], f0)
    torch.testing.assert_close(both[1], y, rtol=0, atol=1e-11)


def test_scalar_defaults_and_one_dimensional_labels():
    k_tt, _, y, _, _ = _problem(k=1, seed=3)
    predict = gradient_descent_mse(k_tt, y)
    out = predict(5.0, 0.0)
    assert out.shape == y.shape
    explicit = torch.linalg.matrix_exp(-k_tt * 5.0 / y.numel())
    torch.testing.assert_close(out, y - explicit @ y, rtol=0, atol=1e-12)
    # (n, 1) initial outputs are accepted for 1-D labels (what a 1-output network returns).
    torch.testing.assert_close(predict(5.0, torch.zeros(y.shape[0], 1, dtype=DT)), out)


def test_float32_stays_float32_and_matches_float64():
    k_tt, k_st, y, f0, f0_test = _problem(k=2, seed=4)
    p64 = gradient_descent_mse(k_tt, y, learning_rate=0.5)
    p32 = gradient_descent_mse(k_tt.float(), y.float(), learning_rate=0.5)
    tr32, te32 = p32(torch.tensor([1.0, 7.0]), f0.float(), f0_test.float(), k_st.float())
    tr64, te64 = p64(torch.tensor([1.0, 7.0], dtype=DT), f0, f0_test, k_st)
    assert tr32.dtype == torch.float32 and te32.dtype == torch.float32 and tr64.dtype == DT
    # float32 eigendecomposition of a well-conditioned 7 x 7 kernel: ~1e-6 relative.
    torch.testing.assert_close(tr32.double(), tr64, rtol=0, atol=1e-4)
    torch.testing.assert_close(te32.double(), te64, rtol=0, atol=1e-4)


def test_numpy_inputs_are_accepted():
    k_tt, _, y, f0, _ = _problem(k=2, seed=5)
    predict = gradient_descent_mse(k_tt.numpy(), y.numpy())
    torch.testing.assert_close(predict(3.0, f0.numpy()), gradient_descent_mse(k_tt, y)(3.0, f0))


def test_duplicate_points_singular_kernel_warns_and_diag_reg_works():
    k_tt, k_st, y, f0, f0_test = _problem(n=6, k=1, seed=6, jitter=0.0)
    # Duplicate training point 0 as point 6: T gets an exact null direction (e_0 - e_6).
    index = torch.tensor([0, 1, 2, 3, 4, 5, 0])
    k_dup = k_tt[index][:, index]
    k_st_dup = k_st[:, index]
    y_dup = y[index].clone()
    y_dup[6] += 1.0  # contradictory labels at the duplicate
    f0_dup = f0[index]
    with pytest.warns(RuntimeWarning, match="singular"):
        predict = gradient_descent_mse(k_dup, y_dup)
    train, test = predict(None, f0_dup, f0_test, k_st_dup)
    assert bool(torch.isfinite(train).all()) and bool(torch.isfinite(test).all())
    # Pseudo-inverse limit: the duplicate pair ends at the mean of its two labels.
    torch.testing.assert_close(train[0], (y_dup[0] + y_dup[6]) / 2, rtol=0, atol=1e-8)
    torch.testing.assert_close(train[0], train[6], rtol=0, atol=1e-8)
    expected = f0_test + k_st_dup @ torch.linalg.pinv(k_dup, hermitian=True) @ (y_dup - f0_dup)
    torch.testing.assert_close(test, expected, rtol=0, atol=1e-8)
    # Finite times along the null direction stay at f0 and give finite results.
    finite = predict(torch.tensor([1.0, 1e6], dtype=DT), f0_dup)
    assert bool(torch.isfinite(finite).all())
    # diag_reg: no warning, and equals the closed form with the regularised kernel.
    reg = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        regularised = gradient_descent_mse(k_dup, y_dup, diag_reg=reg)
    shifted = k_dup + reg * torch.trace(k_dup) / 7 * torch.eye(7, dtype=DT)
    torch.testing.assert_close(regularised(None, f0_dup), y_dup, rtol=0, atol=1e-9)
    _, test_reg = regularised(None, f0_dup, f0_test, k_st_dup)
    torch.testing.assert_close(test_reg, f0_test + k_st_dup @ torch.linalg.solve(shifted, y_dup - f0_dup))


def test_negative_roundoff_eigenvalues_are_clipped():
    k_tt, _, y, f0, _ = _problem(n=6, seed=7, jitter=0.0)
    # Rank 5 with a round-off-sized negative eigenvalue.
    lam, vec = torch.linalg.eigh(k_tt)
    lam[0] = -1e-15 * lam[-1]
    k_neg = (vec * lam) @ vec.T
    with pytest.warns(RuntimeWarning, match="singular"):
        predict = gradient_descent_mse(k_neg, y)
    assert float(predict.eigenvalues.min()) == 0.0
    out = predict(torch.tensor([1e3, 1e9, math.inf], dtype=DT), f0)
    assert bool(torch.isfinite(out).all())
    # The clipped direction keeps its initial residual at every time (exp(-0 t) = 1) and never blows up.
    v0 = vec[:, 0]
    torch.testing.assert_close(out @ v0, (f0 - y) @ v0 + y @ v0 * torch.ones(3, dtype=DT), rtol=0, atol=1e-8)


def test_max_learning_rate_is_the_stability_edge():
    k_tt, _, y, f0, _ = _problem(k=2, seed=8)
    bound = max_learning_rate(k_tt, y_train_size=y.numel())
    lam_max = float(torch.linalg.eigvalsh(k_tt)[-1])
    assert bound == pytest.approx(2 * y.numel() / lam_max, rel=1e-12)
    assert max_learning_rate(k_tt, reduction="sum") == pytest.approx(2 / lam_max, rel=1e-12)
    # Explicit iteration: below the bound the residual shrinks, above it grows.
    for factor, shrinks in ((0.98, True), (1.02, False)):
        u = f0.clone()
        for _ in range(3000):
            u = u - factor * bound / y.numel() * (k_tt @ (u - y))
        assert (float((u - y).norm()) < float((f0 - y).norm())) == shrinks
    with pytest.warns(RuntimeWarning, match=r"largest stable rate [0-9.]+"):
        gradient_descent_mse(k_tt, y, learning_rate=1.02 * bound, discrete=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradient_descent_mse(k_tt, y, learning_rate=0.98 * bound, discrete=True)
        gradient_descent_mse(k_tt, y, learning_rate=10 * bound)  # gradient flow is stable at any rate


def test_bad_input_is_named():
    k_tt, k_st, y, f0, f0_test = _problem(k=2, seed=9)
    with pytest.raises(ValueError, match="y_train"):
        gradient_descent_mse(k_tt, y[:-1])
    with pytest.raises(ValueError, match=r"k_train_train.*square"):
        gradient_descent_mse(k_st, y)
    asym = k_tt.clone()
    asym[0, 1] += 0.1
    with pytest.raises(ValueError, match=r"k_train_train.*symmetric"):
        gradient_descent_mse(asym, y)
    bad = k_tt.clone()
    bad[2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"k_train_train.*NaN"):
        gradient_descent_mse(bad, y)
    bad[2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"k_train_train.*NaN or infinite"):
        gradient_descent_mse(bad, y)
    with pytest.raises(ValueError, match="reduction"):
        gradient_descent_mse(k_tt, y, reduction="avg")
    with pytest.raises(TypeError, match="discrete"):
        gradient_descent_mse(k_tt, y, discrete="euler")
    with pytest.raises(ValueError, match="learning_rate"):
        gradient_descent_mse(k_tt, y, learning_rate=-1.0)
    with pytest.raises(TypeError, match="k_train_train"):
        gradient_descent_mse([[1.0]], y)
    predict = gradient_descent_mse(k_tt, y)
    with pytest.raises(ValueError, match="t must be >= 0"):
        predict(-1.0, f0)
    with pytest.raises(ValueError, match="t must be >= 0"):
        predict(torch.tensor([1.0, -2.0], dtype=DT), f0)
    with pytest.raises(ValueError, match="t contains NaN"):
        predict(float("nan"), f0)
    with pytest.raises(ValueError, match="fx_train_0"):
        predict(1.0, f0[:, :1])
    with pytest.raises(ValueError, match="k_test_train"):
        predict(1.0, f0, f0_test, k_st[:, :-1])
    with pytest.raises(ValueError, match="fx_test_0"):
        predict(1.0, f0, f0_test[:-1], k_st)
    with pytest.raises(ValueError, match="fx_test_0 was given without k_test_train"):
        predict(1.0, f0, f0_test)
    discrete = gradient_descent_mse(k_tt, y, learning_rate=0.1, discrete=True)
    with pytest.raises(ValueError, match="whole numbers"):
        discrete(2.5, f0)
