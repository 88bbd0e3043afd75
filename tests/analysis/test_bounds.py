"""Generalization bound and complexity measures against closed forms on diagonal and hand-built kernels."""

import math

import pytest
import torch

from ntkit.analysis import generalization_bound


def test_diagonal_kernel_closed_forms():
    values = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    kernel = torch.diag(values)
    y = torch.tensor([2.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    result = generalization_bound(kernel, y, ridge=0.5, noise_variance=0.3)
    n, trace = 4, 8.0
    norm = 4 / 4 + 1 / 2 + 1 / 1 + 1 / 1  # sum y_i^2 / lambda_i
    assert result.norm == pytest.approx(norm, rel=1e-12)
    assert result.trace == pytest.approx(trace)
    assert result.bound == pytest.approx(math.sqrt(2 * norm * trace) / n, rel=1e-12)
    assert result.rademacher == pytest.approx(math.sqrt(trace / n))
    r = 0.5 * trace / n  # relative ridge times the mean eigenvalue
    assert result.ridge == pytest.approx(r)
    smoother = values / (values + r)
    assert result.effective_dimension == pytest.approx(float(smoother.sum()), rel=1e-12)
    assert result.bias == pytest.approx(float(((1 - smoother) ** 2 * y**2).sum()) / n, rel=1e-12)
    assert result.variance == pytest.approx(0.3 * float((smoother**2).sum()) / n, rel=1e-12)


def test_matches_direct_linear_algebra_on_a_dense_kernel():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kernel = torch.exp(-(torch.cdist(x, x) ** 2))  # a Gaussian kernel: positive definite
    y = torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = generalization_bound(kernel, y, ridge=0.1)
    # independent route: solve and matrix products instead of the eigenbasis; agreement to ~cond(K) * eps
    norm = float(y @ torch.linalg.solve(kernel, y))
    assert result.norm == pytest.approx(norm, rel=1e-8)
    r = 0.1 * float(kernel.trace()) / 8
    smoother = kernel @ torch.linalg.inv(kernel + r * torch.eye(8, dtype=torch.float64))
    residual = y - smoother @ y
    assert result.bias == pytest.approx(float(residual @ residual) / 8, rel=1e-10)
    assert result.variance == pytest.approx(float((smoother @ smoother).trace()) / 8, rel=1e-10)
    assert result.effective_dimension == pytest.approx(float(smoother.trace()), rel=1e-10)


def test_bound_is_scale_free_and_larger_for_labels_on_small_eigenvalues():
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    kernel = q @ torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.1, 0.01], dtype=torch.float64)) @ q.T
    aligned, misaligned = q[:, 0], q[:, 4]
    small = generalization_bound(kernel, aligned).bound
    assert generalization_bound(7.0 * kernel, aligned).bound == pytest.approx(small, rel=1e-10)
    # y = v_i gives sqrt(2 tr K / lambda_i) / n: the ratio is sqrt(lambda_1 / lambda_5) = sqrt(1000)
    assert generalization_bound(kernel, misaligned).bound / small == pytest.approx(
        math.sqrt(1000.0), rel=1e-8
    )


def test_several_outputs_add_their_norms():
    kernel = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    y = torch.tensor([[1.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    assert generalization_bound(kernel, y).norm == pytest.approx(1 / 2 + 1 + 4 / 2, rel=1e-12)


def test_singular_kernel_asks_for_diag_reg():
    kernel = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="diag_reg"):
        generalization_bound(kernel, y)
    regularized = generalization_bound(kernel, y, diag_reg=0.5)
    # eigenvalues 2 and 0 shifted by 0.5 * tr/n = 0.5; y lies on the null direction with ||y||^2 = 2
    assert regularized.norm == pytest.approx(2.0 / 0.5)


def test_bad_arguments_are_named():
    kernel = torch.eye(2, dtype=torch.float64)
    y = torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="ridge"):
        generalization_bound(kernel, y, ridge=-1.0)
    with pytest.raises(TypeError, match="noise_variance"):
        generalization_bound(kernel, y, noise_variance="big")
    with pytest.raises(ValueError, match="y_train must have shape"):
        generalization_bound(kernel, torch.ones(3, dtype=torch.float64))


def test_fixed_values_on_the_two_layer_relu_gram_matrix():
    """On Arora et al.'s H^inf (unit-norm inputs, first layer trained) the bound is sqrt(y^T H^-1 y / n):
    Theorem 5.1's sqrt(2 y^T H^-1 y / n) over sqrt(2); the ratio between label sets is Theorem 5.1's."""
    from ntkit.layers import Dense, ReLU, Serial

    # two unit vectors 60 degrees apart: theta = pi / 3, H = [[1/2, 1/6], [1/6, 1/2]] (eigenvalues 2/3, 1/3)
    x = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    arch = Serial(Dense(64, b_std=None), ReLU(), Dense(1, b_std=None, trainable=False))
    kernel = arch.kernel(x, get="ntk").ntk
    h_inf = torch.tensor([[1 / 2, 1 / 6], [1 / 6, 1 / 2]], dtype=torch.float64)
    d = 2  # ntkit's input covariance is x.x' / d, so its NTK is H^inf / d
    torch.testing.assert_close(kernel, h_inf / d, rtol=1e-14, atol=1e-15)
    along = generalization_bound(kernel, torch.tensor([1.0, 1.0], dtype=torch.float64))
    across = generalization_bound(kernel, torch.tensor([1.0, -1.0], dtype=torch.float64))
    # y^T H^-1 y = ||y||^2 / lambda = 3 (along the eigenvalue 2/3) and 6 (along 1/3), with n = 2
    assert along.bound == pytest.approx(math.sqrt(3 / 2), rel=1e-13)
    assert across.bound == pytest.approx(math.sqrt(3.0), rel=1e-13)
    assert across.bound == pytest.approx(
        math.sqrt(2 * 6 / 2) / math.sqrt(2), rel=1e-13
    )  # Theorem 5.1 / sqrt 2
    assert across.bound / along.bound == pytest.approx(math.sqrt(6 / 3), rel=1e-13)
    assert along.norm == pytest.approx(3 * d, rel=1e-13)  # y^T K^-1 y with K = H^inf / d
