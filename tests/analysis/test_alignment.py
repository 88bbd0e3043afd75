"""Label alignment: shares on hand-built eigenbases and the kernel-target alignment against its definition."""

import numpy as np
import pytest
import torch

from ntkit.analysis import label_alignment, spectrum


def _basis(n, seed=1):
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def test_labels_on_one_eigenvector_have_all_their_energy_there():
    q = _basis(4)
    kernel = q @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ q.T
    result = label_alignment(kernel, -2.5 * q[:, 1])
    torch.testing.assert_close(
        result.shares, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        result.cumulative, torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert result.top_share(1) == pytest.approx(0.0, abs=1e-12)
    assert result.top_share(2) == pytest.approx(1.0)


def test_shares_follow_the_coordinates_in_the_eigenbasis():
    q = _basis(3)
    kernel = q @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ q.T
    y = q @ torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)  # ||y||^2 = 9
    result = label_alignment(kernel, y)
    expected = torch.tensor([1.0, 4.0, 4.0], dtype=torch.float64) / 9.0
    torch.testing.assert_close(result.shares, expected, rtol=1e-12, atol=1e-12)
    # y^T K y = 3*1 + 2*4 + 1*4 = 15; ||K||_F = sqrt(14); ||y y^T||_F = ||y||^2 = 9
    assert result.kernel_target_alignment == pytest.approx(15.0 / (14.0**0.5 * 9.0), rel=1e-12)


def test_kernel_target_alignment_matches_frobenius_definition_for_several_outputs():
    x = torch.randn(6, 3, dtype=torch.float64)
    kernel = x @ x.T + 0.1 * torch.eye(6, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)
    target = y @ y.T
    # independent route: the Frobenius inner products written out on the full matrices
    expected = float((kernel * target).sum() / (kernel.norm() * target.norm()))
    result = label_alignment(kernel, y)
    assert result.kernel_target_alignment == pytest.approx(expected, rel=1e-12)
    assert float(result.shares.sum()) == pytest.approx(1.0, rel=1e-12)
    assert label_alignment(y @ y.T, y).kernel_target_alignment == pytest.approx(1.0, rel=1e-12)


def test_identity_kernel_alignment_is_one_over_sqrt_n():
    n = 9
    y = torch.randn(n, dtype=torch.float64)
    # <I, y y^T> = ||y||^2, ||I||_F = sqrt(n), ||y y^T||_F = ||y||^2
    assert label_alignment(torch.eye(n, dtype=torch.float64), y).kernel_target_alignment == pytest.approx(
        n**-0.5
    )


def _numpy_reference(kernel: np.ndarray, y: np.ndarray):
    """Shares from numpy.linalg.eigh and the alignment y^T K y / (||K||_F ||y y^T||_F) on the full matrices."""
    values, vectors = np.linalg.eigh(kernel)
    order = np.argsort(values)[::-1]
    labels = y.reshape(len(y), -1)
    shares = ((vectors[:, order].T @ labels) ** 2).sum(axis=1) / (labels**2).sum()
    target = labels @ labels.T
    alignment = (kernel * target).sum() / (np.linalg.norm(kernel) * np.linalg.norm(target))
    return values[order], shares, alignment


@pytest.mark.parametrize("outputs", [None, 2])
def test_accepts_a_precomputed_spectrum(outputs):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(7, 7, generator=generator, dtype=torch.float64)
    kernel = x @ x.T + 0.3 * torch.eye(7, dtype=torch.float64)
    shape = (7,) if outputs is None else (7, outputs)
    y = torch.randn(*shape, generator=generator, dtype=torch.float64)
    # x is square, so the eigenvalues are distinct (gaps >= 0.49, |K| <= 13) and the shares well defined; eigh
    # is backward stable: eigenvector errors ~ n eps ||K|| / gap ~ 1e-14, so shares and
    # alignment agree to ~1e-13; 1e-10 leaves room across LAPACK builds (a wrong share is off by >= 1e-3).
    values, shares, alignment = _numpy_reference(kernel.numpy(), y.numpy())
    for given in (kernel, spectrum(kernel)):
        result = label_alignment(given, y)
        np.testing.assert_allclose(result.eigenvalues.numpy(), values, rtol=1e-10, atol=0)
        np.testing.assert_allclose(result.shares.numpy(), shares, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.cumulative.numpy(), np.cumsum(shares), rtol=0, atol=1e-10)
        assert result.kernel_target_alignment == pytest.approx(alignment, rel=1e-10)
    # The spectrum passed is the one used: a regularised one (K + shift I, shift = 0.5 tr(K) / n) gives the
    # alignment of the shifted kernel, not of K.
    shifted = kernel.numpy() + 0.5 * np.trace(kernel.numpy()) / 7 * np.eye(7)
    values, shares, alignment = _numpy_reference(shifted, y.numpy())
    result = label_alignment(spectrum(kernel, diag_reg=0.5), y)
    np.testing.assert_allclose(result.eigenvalues.numpy(), values, rtol=1e-10, atol=0)
    np.testing.assert_allclose(result.shares.numpy(), shares, rtol=0, atol=1e-10)
    assert result.kernel_target_alignment == pytest.approx(alignment, rel=1e-10)


def test_bad_labels_are_rejected():
    kernel = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="y_train must have shape"):
        label_alignment(kernel, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="all zero"):
        label_alignment(kernel, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="y_train contains"):
        label_alignment(kernel, torch.tensor([1.0, float("inf"), 0.0]))
