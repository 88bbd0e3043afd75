"""Alignment of the labels with a kernel: their energy per eigen-direction and the kernel-target alignment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import as_float_tensor
from .spectrum import Spectrum, _as_spectrum, _check_kernel

__all__ = ["LabelAlignment", "label_alignment"]


@dataclass(frozen=True)
class LabelAlignment:
    """How the labels y distribute over the eigenvectors of a kernel K.

    Attributes:
        eigenvalues: (n,) float64, descending.
        shares: (n,) float64, (v_i . y)^2 / ||y||^2 (summed over outputs for y of shape (n, k)); sums to 1.
        cumulative: (n,) float64, the share of ||y||^2 on the top 1, 2, ..., n eigen-directions.
        kernel_target_alignment: <K, y y^T>_F / (||K||_F ||y y^T||_F) (Cristianini et al. 2002), in [-1, 1].
    """

    eigenvalues: torch.Tensor
    shares: torch.Tensor
    cumulative: torch.Tensor
    kernel_target_alignment: float

    def top_share(self, count: int) -> float:
        """The share of ||y||^2 on the ``count`` eigen-directions of largest eigenvalue."""
        count = max(0, min(int(count), self.cumulative.shape[0]))
        return 0.0 if count == 0 else float(self.cumulative[count - 1])


def label_alignment(K: torch.Tensor | Spectrum, y: torch.Tensor) -> LabelAlignment:
    """The share of ||y||^2 along each eigen-direction of K, cumulative, and the kernel-target alignment.

    With K = sum_i lambda_i v_i v_i^T (lambda descending), y = sum_i (v_i . y) v_i and

        share_i = (v_i . y)^2 / ||y||^2,    cumulative_m = sum_{i <= m} share_i.

    Labels concentrated on the top eigen-directions are learned fast and generalize well; random labels spread
    over all directions (Arora et al. 2019, Section 4). The kernel-target alignment (Cristianini et al.
    2002) is

        A(K, y y^T) = <K, y y^T>_F / (||K||_F ||y y^T||_F) = y^T K y / (||K||_F ||y||^2)

    and, for y of shape (n, k), tr(Y^T K Y) / (||K||_F ||Y Y^T||_F).

    Args:
        K: the kernel on the training inputs (n, n), or its :func:`spectrum` (then the alignment is computed
            from the eigen-decomposition, ||K||_F = ||lambda||_2).
        y: targets, (n,) or (n, k), not all zero.
    """
    spec = _as_spectrum(K if isinstance(K, Spectrum) else _check_kernel(K, "K"))
    n = spec.eigenvalues.shape[0]
    targets = as_float_tensor(y, "y", ndim=None)
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, k) to match K, got {tuple(targets.shape)}")
    labels = targets.to(dtype=torch.float64, device=spec.eigenvectors.device)
    if labels.ndim == 1:
        labels = labels[:, None]
    energy = float((labels**2).sum())
    if energy == 0:
        raise ValueError("y must not be all zero: its alignment with K is undefined")
    coordinates = spec.project(labels)  # (n, k)
    per_direction = (coordinates**2).sum(dim=1)
    shares = per_direction / energy
    cumulative = torch.cumsum(shares, dim=0)
    # y^T K y and ||K||_F from the eigen-decomposition: no second pass over K is needed
    quadratic = float((spec.eigenvalues[:, None] * coordinates**2).sum())
    kernel_norm = float(spec.eigenvalues.norm())
    gram_norm = float((labels.T @ labels).norm())  # ||Y Y^T||_F = ||Y^T Y||_F
    alignment = quadratic / (kernel_norm * gram_norm) if kernel_norm > 0 else 0.0
    return LabelAlignment(spec.eigenvalues, shares, cumulative, alignment)
