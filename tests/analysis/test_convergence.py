"""Eigen-direction convergence against closed-form exponentials and explicitly simulated training."""

import math

import pytest
import torch

from ntkit.analysis import eigen_convergence


def _kernel(n=5, seed=2):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x @ x.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_diagonal_kernel_gives_the_closed_form_exponentials():
    kernel = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    f0 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    t = [0.0, 1.0, 2.0]
    result = eigen_convergence(kernel, y, f0, t, learning_rate=0.5, reduction="sum")
    # v_1 = e_1 (lambda 3), v_2 = e_2 (lambda 1): r_i(t) = exp(-0.5 lambda_i t) (f0 - y)_i, up to the sign
    # of v_i, which cancels in r_i(t) / r_i(0): comparing that ratio (signed) catches a sign error in the decay
    decay = torch.tensor([[math.exp(-1.5 * s), math.exp(-0.5 * s)] for s in t], dtype=torch.float64)
    torch.testing.assert_close(result.predicted / result.initial, decay, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(result.initial.abs(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(result.rates, torch.tensor([1.5, 0.5], dtype=torch.float64))


def test_mean_reduction_divides_rates_by_the_number_of_label_entries():
    kernel = _kernel()
    y = torch.randn(5, 2, dtype=torch.float64)
    f0 = torch.zeros(5, 2, dtype=torch.float64)
    mean = eigen_convergence(kernel, y, f0, [0.0, 1.0], reduction="mean")
    total = eigen_convergence(kernel, y, f0, [0.0, 1.0], reduction="sum")
    torch.testing.assert_close(mean.rates * 10, total.rates)
    assert mean.predicted.shape == (2, 5, 2)


def test_prediction_matches_matrix_exponential_and_measured_projection():
    kernel = _kernel()
    y = torch.randn(5, dtype=torch.float64)
    f0 = torch.randn(5, dtype=torch.float64)
    times = torch.tensor([0.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    eta = 0.3
    # independent route: u(t) = y + expm(-eta K t / N) (u0 - y) with N = 5 label entries (reduction="mean")
    trajectory = torch.stack([y + torch.linalg.matrix_exp(-eta * kernel * s / 5) @ (f0 - y) for s in times])
    result = eigen_convergence(kernel, y, f0, times, learning_rate=eta, measured=trajectory)
    # matrix_exp and eigh agree to ~1e-14 on this well-conditioned 5x5 kernel
    torch.testing.assert_close(result.measured, result.predicted, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.fitted_rates(), result.rates, rtol=1e-8, atol=1e-10)


def test_discrete_steps_match_an_explicit_gradient_descent_loop():
    kernel = _kernel()
    y = torch.randn(5, dtype=torch.float64)
    u = torch.randn(5, dtype=torch.float64)
    f0 = u.clone()
    eta, recorded = 0.05, [u.clone()]
    for _ in range(20):  # kernel gradient descent on L = 1/(2N) ||u - y||^2
        u = u - eta * kernel @ (u - y) / 5
        recorded.append(u.clone())
    times = torch.arange(21, dtype=torch.float64)
    result = eigen_convergence(
        kernel, y, f0, times, learning_rate=eta, discrete=True, measured=torch.stack(recorded)
    )
    torch.testing.assert_close(result.measured, result.predicted, rtol=1e-10, atol=1e-12)


def test_float32_labels_keep_their_dtype():
    kernel = _kernel().float()
    y = torch.randn(5)
    result = eigen_convergence(kernel, y, torch.zeros(5), [0.0, 1.0], measured=torch.zeros(2, 5))
    assert result.predicted.dtype == torch.float32
    assert result.measured.dtype == torch.float32
    assert result.eigenvalues.dtype == torch.float64


def test_fitted_rates_need_a_measurement():
    result = eigen_convergence(
        _kernel(), torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), [0, 1, 2]
    )
    with pytest.raises(ValueError, match="measured"):
        result.fitted_rates()
    torch.testing.assert_close(result.fitted_rates("predicted"), result.rates, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fx_train_0": torch.zeros(4, dtype=torch.float64)}, r"fx_train_0 must have shape \(5,\)"),
        ({"t": [-1.0]}, "non-negative"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"reduction": "avg"}, "reduction"),
        ({"y_train": torch.ones(4, dtype=torch.float64)}, r"y_train must have shape \(5,\)"),
        ({"measured": torch.zeros(3, 5, dtype=torch.float64)}, "measured must have shape"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = {
        "k_train_train": _kernel(),
        "y_train": torch.ones(5, dtype=torch.float64),
        "fx_train_0": torch.zeros(5, dtype=torch.float64),
        "t": [0.0, 1.0],
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        eigen_convergence(**arguments)


def test_fitted_rates_window_ignores_the_stalled_tail():
    kernel = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    y = torch.zeros(2, dtype=torch.float64)
    f0 = torch.ones(2, dtype=torch.float64)
    times = torch.arange(0.0, 20.0, dtype=torch.float64)
    # a measured run that follows exp(-rate t) until it stalls at 1e-3: the stall must not bend the fit
    rates = torch.tensor([2.0, 1.0], dtype=torch.float64) / 2
    measured = torch.maximum(
        torch.exp(-rates[None, :] * times[:, None]), torch.tensor(1e-3, dtype=torch.float64)
    )
    result = eigen_convergence(kernel, y, f0, times, measured=measured)
    windowed = result.fitted_rates(window=1e-2)  # exp(-t) >= 1e-2 up to t = 4.6; the stall starts at t = 6.9
    torch.testing.assert_close(windowed, rates, rtol=1e-10, atol=1e-12)
    assert float(result.fitted_rates()[0]) < 0.9 * float(
        rates[0]
    )  # without the window the stall drags it down


def test_discrete_steps_are_checked_like_gradient_descent_mse():
    """Whole numbers of steps only, and the same divergence warning as gradient_descent_mse."""
    from ntkit.predict import gradient_descent_mse

    kernel = _kernel()
    y = torch.ones(5, dtype=torch.float64)
    f0 = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="whole numbers"):
        eigen_convergence(kernel, y, f0, [0.0, 1.5], learning_rate=0.1, discrete=True)
    lam_max = float(torch.linalg.eigvalsh(kernel)[-1])
    unstable = 2.5 * 5 / lam_max  # eta lambda_max / N = 2.5 > 2
    with pytest.warns(RuntimeWarning, match=r"largest stable rate [0-9.]+") as ours:
        eigen_convergence(kernel, y, f0, [0.0, 3.0], learning_rate=unstable, discrete=True)
    with pytest.warns(RuntimeWarning, match=r"largest stable rate") as theirs:
        gradient_descent_mse(kernel, y, learning_rate=unstable, discrete=True)
    assert str(ours[0].message) == str(theirs[0].message)
    assert ours[0].filename == __file__  # the warning points at the caller
    # integer step counts are accepted, and continuous times may be fractional
    whole = eigen_convergence(kernel, y, f0, torch.arange(3), learning_rate=0.1, discrete=True)
    torch.testing.assert_close(whole.t, torch.arange(3, dtype=torch.float64))
    eigen_convergence(kernel, y, f0, [0.0, 1.5], learning_rate=0.1)


def test_infinite_time_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        eigen_convergence(
            _kernel(), torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), [math.inf]
        )
