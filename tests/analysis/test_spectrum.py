"""Spectrum: known eigen-decompositions, no stale cache, float64 on the input's device, one ordering and one
kernel check shared with the predictors, and input checks."""

import math

import numpy as np
import pytest
import torch

from ntkit.analysis import spectrum


def _hand_built(values, seed=0):
    """K = Q diag(values) Q^T with a random orthogonal Q: the eigenvalues are known exactly."""
    n = len(values)
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ q.T, q


def test_diagonal_kernel_sorted_descending_with_unit_eigenvectors():
    spec = spectrum(torch.diag(torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64)))
    torch.testing.assert_close(spec.eigenvalues, torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))
    # eigenvectors of a diagonal matrix are the coordinate axes (up to sign)
    torch.testing.assert_close(spec.eigenvectors.abs(), torch.eye(3, dtype=torch.float64)[:, [1, 2, 0]])
    assert spec.condition_number == pytest.approx(4.0)
    assert spec.trace == pytest.approx(7.0)


def test_hand_built_eigenbasis_is_recovered():
    values = [5.0, 3.0, 1.0, 0.5, 0.25]
    kernel, q = _hand_built(values)
    spec = spectrum(kernel)
    torch.testing.assert_close(
        spec.eigenvalues, torch.tensor(values, dtype=torch.float64), rtol=1e-12, atol=1e-12
    )
    # |<v_i, q_i>| = 1: each recovered eigenvector is the built one up to sign
    overlaps = (spec.eigenvectors * q).sum(dim=0).abs()
    torch.testing.assert_close(overlaps, torch.ones(5, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    reconstructed = spec.eigenvectors @ torch.diag(spec.eigenvalues) @ spec.eigenvectors.T
    torch.testing.assert_close(reconstructed, kernel, rtol=1e-12, atol=1e-12)


def test_effective_rank_counts_equal_eigenvalues():
    kernel, _ = _hand_built([2.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    spec = spectrum(kernel)
    # entropy of (1/3, 1/3, 1/3) is log 3; round-off eigenvalues near 0 add at most ~1e-14 of entropy
    assert spec.effective_rank == pytest.approx(3.0, rel=1e-9)
    assert spec.participation_ratio == pytest.approx(3.0, rel=1e-9)
    assert math.isinf(spec.condition_number) or spec.condition_number > 1e12


def test_effective_rank_of_unequal_spectrum_matches_entropy_formula():
    values = [3.0, 1.0]
    spec = spectrum(torch.diag(torch.tensor(values, dtype=torch.float64)))
    p = np.array(values) / sum(values)
    assert spec.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert spec.participation_ratio == pytest.approx(16.0 / 10.0, rel=1e-12)


def test_float32_input_is_decomposed_in_float64():
    kernel, _ = _hand_built([3.0, 2.0, 1.0])
    spec = spectrum(kernel.float())
    assert spec.eigenvalues.dtype == torch.float64
    assert spec.eigenvalues.device == kernel.device
    torch.testing.assert_close(
        spec.eigenvalues, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-6
    )


def test_in_place_changes_through_data_are_seen():
    """A change through .data leaves the version counter alone: a cache keyed on it would answer stale."""
    kernel, _ = _hand_built([3.0, 2.0, 1.0])
    first = spectrum(kernel)
    version = kernel._version
    kernel.data.mul_(2.0)
    assert kernel._version == version  # the very change an id/version key cannot see
    torch.testing.assert_close(spectrum(kernel).eigenvalues, 2 * first.eigenvalues, rtol=1e-12, atol=1e-12)


def test_in_place_changes_through_a_shared_numpy_buffer_are_seen():
    kernel, _ = _hand_built([3.0, 2.0, 1.0])
    buffer = kernel.numpy()  # shares memory with the tensor
    first = spectrum(kernel)
    buffer *= 3.0
    torch.testing.assert_close(spectrum(kernel).eigenvalues, 3 * first.eigenvalues, rtol=1e-12, atol=1e-12)
    # the analyses that start from K see the change too
    from ntkit.analysis import label_alignment

    y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    before = label_alignment(first, y).kernel_target_alignment
    buffer[0, 0] += 5.0  # no longer a multiple of the first kernel: the alignment with e_0 changes
    assert label_alignment(kernel, y).kernel_target_alignment != pytest.approx(before, rel=1e-6)


def test_numpy_input_accepted():
    spec = spectrum(np.diag([2.0, 1.0]))
    torch.testing.assert_close(spec.eigenvalues, torch.tensor([2.0, 1.0], dtype=torch.float64))


def test_project_gives_eigen_coordinates():
    kernel, q = _hand_built([4.0, 2.0, 1.0])
    spec = spectrum(kernel)
    coordinates = spec.project(q[:, 1] * 3.0)
    torch.testing.assert_close(
        coordinates.abs(), torch.tensor([0.0, 3.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    with pytest.raises(ValueError, match="vectors"):
        spec.project(torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kernel", "error", "match"),
    [
        (torch.ones(2, 3), ValueError, "square"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), ValueError, "symmetric"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), ValueError, "NaN"),
        (torch.ones(3), ValueError, "2-D"),
        (torch.ones(2, 2, dtype=torch.int64), TypeError, "floating"),
        ([[1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_kernels_are_rejected_with_a_named_argument(kernel, error, match):
    with pytest.raises(error, match=match):
        spectrum(kernel)


def test_predictors_and_analyses_share_one_spectrum_ordering_and_regularisation():
    """The spectrum a predictor evolves with is the one analysis.spectrum gives: descending, same diag_reg rule."""
    from ntkit.analysis import Spectrum, label_alignment
    from ntkit.predict import gradient_descent_mse

    values = [4.0, 2.0, 1.0, 0.5]
    kernel, q = _hand_built(values, seed=3)
    diag_reg = 0.1
    # the documented rule, by hand: K + diag_reg * trace(K) / n * I shifts every eigenvalue by 0.1 * 7.5 / 4
    expected = torch.tensor(values, dtype=torch.float64) + diag_reg * sum(values) / len(values)
    predictor = gradient_descent_mse(kernel, torch.ones(4, dtype=torch.float64), diag_reg=diag_reg)
    analysed = spectrum(kernel, diag_reg=diag_reg)
    assert isinstance(predictor.spectrum, Spectrum)
    for spec in (predictor.spectrum, analysed):
        torch.testing.assert_close(spec.eigenvalues, expected, rtol=1e-12, atol=1e-12)
        overlaps = (
            (spec.eigenvectors * q).sum(dim=0).abs()
        )  # column i is the built eigenvector i (up to sign)
        torch.testing.assert_close(overlaps, torch.ones(4, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    y = q[:, 0] + 0.5 * q[:, 2]
    shares = label_alignment(predictor.spectrum, y).shares
    torch.testing.assert_close(
        shares, torch.tensor([0.8, 0.0, 0.2, 0.0], dtype=torch.float64), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("relative", [1e-10, 1e-6])
def test_one_kernel_check_accepts_and_refuses_alike(relative):
    """Asymmetry of 1e-10 (tiled round-off) passes every entry point; 1e-6 (another kernel) fails every one."""
    from ntkit.predict import gradient_descent_mse

    kernel, _ = _hand_built([3.0, 2.0, 1.0])
    kernel[0, 1] += relative * float(kernel.abs().max())
    y = torch.ones(3, dtype=torch.float64)
    calls = (lambda: spectrum(kernel), lambda: gradient_descent_mse(kernel, y))
    for call in calls:
        if relative < 1e-8:  # below sqrt(eps) = 1.5e-8 of float64
            call()
        else:
            with pytest.raises(ValueError, match=r"k_train_train must be symmetric.*sqrt\(eps\)"):
                call()


def test_indefinite_kernel_warns_and_its_negative_eigenvalue_is_clipped():
    kernel, _ = _hand_built([2.0, 1.0, -0.5])
    with pytest.warns(RuntimeWarning, match="not positive semi-definite"):
        spec = spectrum(kernel)
    torch.testing.assert_close(
        spec.eigenvalues, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert math.isinf(spec.condition_number) and spec.rank == 2
