"""Eigendecomposition of a kernel matrix in float64, with its condition number and effective rank."""

from __future__ import annotations

import torch

from .._spectral import Spectrum, decompose
from .._validation import Array, check_kernel, check_real
from .._warnings import renamed_keywords

__all__ = ["Spectrum", "spectrum"]


@renamed_keywords(K="k_train_train")
def spectrum(k_train_train: Array, *, diag_reg: float = 0.0) -> Spectrum:
    """Eigenvalues and eigenvectors of a kernel matrix K (n, n), in float64 and descending order.

    K + shift I = V diag(lambda_1 >= ... >= lambda_n) V^T, with shift = diag_reg * tr(K) / n (0 by default):
    the one ordering and regularisation rule of ntkit, so this is the spectrum `ntkit.predict.gradient_descent_mse`
    works with (its `spectrum` attribute, there in K's own dtype). Eigenvalues at or below n * eps * lambda_1 are
    round-off and are exactly 0; a RuntimeWarning says when K is not positive semi-definite beyond that.
    Under gradient flow on the MSE loss the residual along v_i decays as exp(-eta lambda_i t / N) (Jacot et
    al. 2018; Lee et al. 2019), so the spectrum sets the speed of training direction by direction; Arora et al.
    (2019) tie both speed and generalization to how the labels project on it.

    The decomposition is done in float64 whatever K's dtype (the small eigenvalues of an NTK are lost in
    float32) on K's device. It is not cached: no key on a tensor (its id and version counter) sees every
    change (through ``.data`` or a numpy array sharing its memory), and a stale spectrum is a wrong answer.
    Where one decomposition should serve several analyses, compute it once and pass the :class:`Spectrum`
    (``label_alignment``, ``generalization_bound`` and ``eigen_convergence`` all accept it).

    Args:
        k_train_train: the kernel of the training points with themselves, symmetric (checked as everywhere in
            ntkit: to sqrt(eps) * max |K|).
        diag_reg: the relative regularisation of the predictors.

    Returns:
        A :class:`Spectrum` (eigenvalues, eigenvectors, condition number, effective rank, participation ratio),
        float64 on K's device.
    """
    diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
    kernel = check_kernel(k_train_train, "k_train_train")
    return decompose(kernel, diag_reg=diag_reg, name="k_train_train", dtype=torch.float64)
