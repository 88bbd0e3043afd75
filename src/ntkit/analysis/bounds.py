"""Data-dependent generalization bound of Arora et al. (2019) and the common kernel complexity measures."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._spectral import Spectrum, as_spectrum
from .._validation import Array, check_labels, check_real
from .._warnings import renamed_keywords

__all__ = ["ComplexityMeasures", "generalization_bound"]


@dataclass(frozen=True)
class ComplexityMeasures:
    """Complexity of fitting labels y with a kernel K (n training points); see :func:`generalization_bound`.

    Attributes:
        bound: sqrt(2 y^T K^-1 y tr(K)) / n, a scale-free form of the complexity term of Arora et al.
            (2019), Theorem 5.1; on their H^infinity it is that term divided by sqrt(2) (see
            :func:`generalization_bound`).
        norm: y^T K^-1 y, the squared RKHS norm of the interpolant (tr(Y^T K^-1 Y) for several outputs).
        trace: tr(K).
        rademacher: sqrt(tr(K) / n), the Rademacher-style size of the kernel.
        effective_dimension: sum_i lambda_i / (lambda_i + ridge).
        bias: squared bias of kernel ridge regression with that ridge, (1/n) ||(I - S) y||^2.
        variance: its variance for label noise of variance ``noise_variance``, noise_variance tr(S^2) / n.
        ridge: the absolute ridge used, ``ridge`` times tr(K) / n.
        diag_reg: the relative regularization added to K for the inverse in ``norm`` and ``bound``.
    """

    bound: float
    norm: float
    trace: float
    rademacher: float
    effective_dimension: float
    bias: float
    variance: float
    ridge: float
    diag_reg: float

    def as_dict(self) -> dict[str, float]:
        """The measures as a plain dict (for JSON)."""
        return dict(self.__dict__)


@renamed_keywords(K="k_train_train", y="y_train")
def generalization_bound(
    k_train_train: Array | Spectrum,
    y_train: Array,
    *,
    diag_reg: float = 0.0,
    ridge: float = 1e-2,
    noise_variance: float = 1.0,
) -> ComplexityMeasures:
    """The data-dependent generalization bound of Arora et al. (2019) and related complexity measures.

    Arora, Du, Hu, Li and Wang (2019), "Fine-grained analysis of optimization and generalization for
    overparameterized two-layer neural networks", bound the population loss of the trained network by the
    complexity of the labels under the NTK Gram matrix. Their Theorem 5.1 has the complexity term
    sqrt(2 y^T H^-1 y / n) for the two-layer ReLU Gram matrix H^infinity (first layer trained, unit-norm
    inputs: H_ij = x_i . x_j (pi - arccos(x_i . x_j)) / (2 pi)). Here, for any kernel K,

        bound = sqrt(2 y^T K^-1 y * tr(K)) / n,

    which is unchanged when K is multiplied by a constant (so it does not depend on the kernel's
    normalisation). On H^infinity, whose trace is n / 2, it equals sqrt(y^T H^-1 y / n): Theorem 5.1's term
    divided by sqrt(2), not that term itself. The ratio of the bound between two label sets on the same
    kernel (what the report compares: true against permuted labels) is the same as for Theorem 5.1's term.
    Labels aligned with the top eigen-directions of K have a small y^T K^-1 y = sum_i (v_i . y)^2 / lambda_i;
    random labels a large one. Alongside:

    - norm = y^T K^-1 y, the squared RKHS norm of the minimum-norm interpolant;
    - rademacher = sqrt(tr(K) / n);
    - effective_dimension = sum_i lambda_i / (lambda_i + r) = tr(S), with S = K (K + r I)^-1 the ridge
      smoother;
    - bias = (1/n) ||(I - S) y||^2 = (1/n) sum_i (r / (lambda_i + r))^2 (v_i . y)^2 and
      variance = (sigma^2 / n) tr(S^2) = (sigma^2 / n) sum_i (lambda_i / (lambda_i + r))^2, the fixed-design
      squared bias and variance of kernel ridge regression when y is the noise-free signal.

    Args:
        k_train_train: the kernel K on the training inputs (n, n), or its :func:`spectrum`.
        y_train: targets y, (n,) or (n, k).
        diag_reg: adds diag_reg * tr(K) / n to K's eigenvalues before inverting (0: the theory's exact
            inverse).
        ridge: the kernel-ridge regularization r, relative: r = ridge * tr(K) / n.
        noise_variance: sigma^2, the label noise variance in the variance term.

    Raises:
        ValueError: when K (after diag_reg) is singular to working precision, with a hint to pass diag_reg.
    """
    spec = as_spectrum(k_train_train)
    n = spec.eigenvalues.shape[0]
    targets = check_labels(y_train, n, "y_train", against="k_train_train")
    diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
    ridge = check_real(ridge, "ridge", minimum=0.0)
    noise_variance = check_real(noise_variance, "noise_variance", minimum=0.0)

    values = spec.eigenvalues.to(torch.float64)  # >= 0: the spectrum's round-off ones are exactly 0
    trace = spec.trace
    shifted = values + diag_reg * trace / n  # the regularisation rule of the predictors, on the eigenvalues
    # the spectrum's rank cutoff: below it the inverse would amplify round-off, not signal
    floor = n * torch.finfo(spec.eigenvalues.dtype).eps * spec.largest
    if float(shifted.min()) <= floor:
        raise ValueError(
            f"K is singular to working precision (smallest eigenvalue {float(values.min()):.3g}, "
            f"largest {float(values.max()):.3g}); pass diag_reg > 0 to regularize the inverse"
        )
    labels = targets.to(dtype=torch.float64, device=spec.eigenvectors.device)
    if labels.ndim == 1:
        labels = labels[:, None]
    coordinates_sq = (spec.project(labels) ** 2).sum(dim=1)
    norm = float((coordinates_sq / shifted).sum())
    bound = math.sqrt(2.0 * norm * trace) / n

    absolute_ridge = ridge * trace / n
    if absolute_ridge > 0:
        smoother = values / (values + absolute_ridge)
    else:
        smoother = (~spec.null).to(torch.float64)
    effective_dimension = float(smoother.sum())
    bias = float(((1.0 - smoother) ** 2 * coordinates_sq).sum()) / n
    variance = noise_variance * float((smoother**2).sum()) / n
    return ComplexityMeasures(
        bound=bound,
        norm=norm,
        trace=trace,
        rademacher=math.sqrt(trace / n),
        effective_dimension=effective_dimension,
        bias=bias,
        variance=variance,
        ridge=absolute_ridge,
        diag_reg=diag_reg,
    )
