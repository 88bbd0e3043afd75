"""Label alignment: shares on hand-built eigenbases and the kernel-target alignment against its definition."""

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


def test_accepts_a_precomputed_spectrum():
    kernel = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    y = torch.tensor([1.0, 1.0], dtype=torch.float64)
    direct = label_alignment(kernel, y)
    via_spectrum = label_alignment(spectrum(kernel), y)
    torch.testing.assert_close(direct.shares, via_spectrum.shares)


def test_bad_labels_are_rejected():
    kernel = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="y_train must have shape"):
        label_alignment(kernel, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="all zero"):
        label_alignment(kernel, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="y_train contains"):
        label_alignment(kernel, torch.tensor([1.0, float("inf"), 0.0]))
