"""Alignment of the labels with a kernel: their energy per eigen-direction and the kernel-target alignment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._spectral import Spectrum, as_spectrum
from .._validation import Array, check_labels
from .._warnings import renamed_keywords

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


@renamed_keywords(K="k_train_train", y="y_train")
def label_alignment(k_train_train: Array | Spectrum, y_train: Array) -> LabelAlignment:
    """The share of ||y||^2 along each eigen-direction of K, cumulative, and the kernel-target alignment.

    With K = sum_i lambda_i v_i v_i^T (lambda descending), y = sum_i (v_i . y) v_i and

        share_i = (v_i . y)^2 / ||y||^2,    cumulative_m = sum_{i <= m} share_i.

    Labels concentrated on the top eigen-directions are learned fast and generalize well; random labels spread
    over all directions (Arora et al. 2019, Section 4). The kernel-target alignment (Cristianini et al.
    2002) is

        A(K, y y^T) = <K, y y^T>_F / (||K||_F ||y y^T||_F) = y^T K y / (||K||_F ||y||^2)

    and, for y of shape (n, k), tr(Y^T K Y) / (||K||_F ||Y Y^T||_F).

    Args:
        k_train_train: the kernel K on the training inputs (n, n), or its :func:`spectrum` (the alignment is
            computed from the eigen-decomposition either way, ||K||_F = ||lambda||_2).
        y_train: targets y, (n,) or (n, k), not all zero.
    """
    spec = as_spectrum(k_train_train)
    targets = check_labels(y_train, spec.eigenvalues.shape[0], "y_train", against="k_train_train")
    labels = targets.to(dtype=torch.float64, device=spec.eigenvectors.device)
    if labels.ndim == 1:
        labels = labels[:, None]
    energy = float((labels**2).sum())
    if energy == 0:
        raise ValueError("y_train must not be all zero: its alignment with K is undefined")
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
