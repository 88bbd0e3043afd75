"""Eigen-decomposition of a kernel matrix in float64, with its condition number and effective rank."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import as_float_tensor

__all__ = ["Spectrum", "spectrum"]


@dataclass(frozen=True)
class Spectrum:
    """The eigen-decomposition K = V diag(lambda) V^T of a symmetric kernel matrix.

    Attributes:
        eigenvalues: (n,) float64, in descending order (largest first).
        eigenvectors: (n, n) float64; column i is the unit eigenvector of ``eigenvalues[i]``.
        condition_number: lambda_max / lambda_min (``inf`` when lambda_min <= 0).
        effective_rank: exp of the Shannon entropy of p_i = lambda_i / sum_j lambda_j (Roy & Vetterli 2007),
            counting negative round-off eigenvalues as zero; it equals r for r equal non-zero eigenvalues.
        participation_ratio: (sum lambda)^2 / sum lambda^2, a second common count of the dominant directions.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    condition_number: float
    effective_rank: float
    participation_ratio: float

    @property
    def trace(self) -> float:
        """tr K = sum_i lambda_i."""
        return float(self.eigenvalues.sum())

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """Coordinates V^T r of r in the eigenbasis: (n,) -> (n,), (n, k) -> (n, k), in float64."""
        basis = self.eigenvectors
        vectors = vectors.to(dtype=basis.dtype, device=basis.device)
        if vectors.ndim not in (1, 2) or vectors.shape[0] != basis.shape[0]:
            raise ValueError(
                f"vectors must have shape (n,) or (n, k) with n = {basis.shape[0]}, got "
                f"{tuple(vectors.shape)}"
            )
        return basis.T @ vectors


def _check_kernel(kernel: Any, name: str = "K") -> torch.Tensor:
    """Return ``kernel`` as a square, finite, symmetric floating tensor, raising ValueError/TypeError
    otherwise.

    Symmetry is checked to a tolerance of 1e3 machine epsilons of the input dtype times max |K|: empirical
    NTKs computed by tiles in float32 differ from their transpose by a few ulps, while a non-kernel matrix
    fails.
    """
    kernel = as_float_tensor(kernel, name, ndim=2, allow_half=False)
    n_rows, n_cols = kernel.shape
    if n_rows != n_cols:
        raise ValueError(f"{name} must be a square kernel matrix K(X, X), got shape {tuple(kernel.shape)}")
    if n_rows == 0:
        raise ValueError(f"{name} must not be empty")
    scale = float(kernel.abs().max())
    asymmetry = float((kernel - kernel.T).abs().max())
    tolerance = 1e3 * torch.finfo(kernel.dtype).eps * max(scale, torch.finfo(kernel.dtype).tiny)
    if asymmetry > tolerance:
        raise ValueError(
            f"{name} must be symmetric, got max |{name} - {name}.T| = {asymmetry:.3g} (max |{name}| = "
            f"{scale:.3g})"
        )
    return kernel


def spectrum(K: torch.Tensor) -> Spectrum:
    """Eigenvalues and eigenvectors of the kernel matrix K (n, n), in float64 and descending order.

    K = V diag(lambda_1 >= ... >= lambda_n) V^T. Under gradient flow on the MSE loss the residual along
    v_i decays as exp(-eta lambda_i t / N) (Jacot et al. 2018; Lee et al. 2019), so the spectrum sets the
    speed of training direction by direction; Arora et al. (2019) tie both speed and generalization to how
    the labels project on it.

    The decomposition is done in float64 whatever K's dtype (the small eigenvalues of an NTK are lost in
    float32) on K's device. It is not cached: no key on a tensor (its id and version counter) sees every
    change (through ``.data`` or a numpy array sharing its memory), and a stale spectrum is a wrong answer.
    Where one decomposition should serve several analyses, compute it once and pass the :class:`Spectrum`
    (``label_alignment``, ``generalization_bound`` and ``eigen_convergence`` all accept it).

    Returns:
        A :class:`Spectrum` with eigenvalues, eigenvectors, condition number, effective rank and participation
        ratio. The tensors are float64 on K's device.
    """
    kernel = _check_kernel(K, "K")
    sym = kernel.to(torch.float64)
    sym = 0.5 * (sym + sym.T)
    values, vectors = torch.linalg.eigh(sym)
    values = values.flip(0)
    vectors = vectors.flip(1)
    largest, smallest = float(values[0]), float(values[-1])
    condition = largest / smallest if smallest > 0 else math.inf
    clipped = values.clamp_min(0.0)
    total = float(clipped.sum())
    if total > 0:
        probabilities = clipped / total
        nonzero = probabilities[probabilities > 0]
        entropy = float(-(nonzero * nonzero.log()).sum())
        effective_rank = math.exp(entropy)
        participation = total**2 / float((clipped**2).sum())
    else:
        effective_rank = 0.0
        participation = 0.0
    return Spectrum(values, vectors, condition, effective_rank, participation)


def _as_spectrum(K: torch.Tensor | Spectrum) -> Spectrum:
    """Accept either a kernel matrix or its already computed :class:`Spectrum`."""
    return K if isinstance(K, Spectrum) else spectrum(K)
