"""The one eigendecomposition of a kernel that the closed-form predictions and the analyses share.

Public as `ntkit.analysis.Spectrum` (made by `ntkit.analysis.spectrum`, and the `spectrum` attribute of
`ntkit.predict.MSEPredictor`). One ordering and one regularisation rule everywhere:

    K + shift I = V diag(lam) V^T,   lam_1 >= lam_2 >= ... >= lam_n   (descending; column i of V is v_i),
    shift = diag_reg * trace(K) / n  (docs/architecture.md; 0 without diag_reg),

and eigenvalues at or below n * eps * lam_1 (the rank cutoff of numpy.linalg.matrix_rank) are round-off: they are
set to exactly 0, and the directions they span do not move under the dynamics. An eigenvalue below
-sqrt(eps) * lam_1 is more than round-off of a PSD matrix: a RuntimeWarning says so (and it is set to 0 too).

For the linear MSE dynamics with c = learning_rate / N (N as in ntkit._loss), the two functions of K that every
closed form needs are, per eigenvalue,

    g(lam, t) = exp(-c lam t)                 (gradient flow)      or (1 - c lam)**t (discrete steps)
    h(lam, t) = (1 - g(lam, t)) / lam         -> c t as lam -> 0,  and 1 / lam at t = inf (0 for lam = 0)

so that exp(-c K t) = V diag(g) V^T and K^-1 (I - exp(-c K t)) = V diag(h) V^T (Lee et al. 2019, eqs. 8-9).
h is computed without cancellation (expm1 / log1p), so tiny eigenvalues give the right small-lam limit instead
of round-off, and eigenvalues that are zero give the pseudo-inverse at t = inf.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ._validation import check_kernel
from ._warnings import external_stacklevel

__all__ = ["Spectrum", "as_spectrum", "decompose", "shifted", "warn_conditioning", "warn_unstable_rate"]


@dataclass(frozen=True, eq=False)
class Spectrum:
    """The eigendecomposition K + shift I = V diag(lambda) V^T of a symmetric kernel matrix, largest first.

    Attributes:
        eigenvalues: (n,), descending; those at round-off level (<= n eps lambda_1) are exactly 0.
        eigenvectors: (n, n); column i is the unit eigenvector of ``eigenvalues[i]``.
        diag_reg: the relative regularisation; shift = diag_reg * trace(K) / n was added to the diagonal.
        shift: that absolute shift (0.0 without regularisation).

    Derived: ``trace``, ``rank``, ``condition_number`` (lambda_1 / lambda_n, ``inf`` when lambda_n = 0),
    ``effective_rank`` (exp of the Shannon entropy of p_i = lambda_i / sum_j lambda_j, Roy & Vetterli 2007:
    r for r equal non-zero eigenvalues) and ``participation_ratio`` ((sum lambda)^2 / sum lambda^2).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    diag_reg: float = 0.0
    shift: float = 0.0

    @property
    def null(self) -> torch.Tensor:
        """(n,) bool: the directions whose eigenvalue is zero to working precision."""
        return self.eigenvalues == 0

    @property
    def rank(self) -> int:
        return int((self.eigenvalues != 0).sum())

    @property
    def largest(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def trace(self) -> float:
        """tr(K + shift I) = sum_i lambda_i."""
        return float(self.eigenvalues.sum())

    @property
    def condition_number(self) -> float:
        smallest = float(self.eigenvalues[-1])
        return self.largest / smallest if smallest > 0 else math.inf

    @property
    def effective_rank(self) -> float:
        total = self.trace
        if total <= 0:
            return 0.0
        p = self.eigenvalues[self.eigenvalues > 0].to(torch.float64) / total
        return math.exp(float(-(p * p.log()).sum()))

    @property
    def participation_ratio(self) -> float:
        total = self.trace
        return total**2 / float((self.eigenvalues.to(torch.float64) ** 2).sum()) if total > 0 else 0.0

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """Coordinates V^T r of r in the eigenbasis: (n,) -> (n,), (n, k) -> (n, k), in the spectrum's dtype."""
        basis = self.eigenvectors
        vectors = vectors.to(dtype=basis.dtype, device=basis.device)
        if vectors.ndim not in (1, 2) or vectors.shape[0] != basis.shape[0]:
            raise ValueError(
                f"vectors must have shape (n,) or (n, k) with n = {basis.shape[0]}, got "
                f"{tuple(vectors.shape)}"
            )
        return basis.T @ vectors

    def max_learning_rate(self, entries: int) -> float:
        """Largest stable discrete rate: |1 - eta lam / N| < 1 for every lam iff eta < 2N / lam_1."""
        return 2.0 * entries / self.largest

    def decay(self, times: torch.Tensor, rate: float, discrete: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """g and h of the module docstring, each of shape (len(times), n), for c = `rate`."""
        lam = self.eigenvalues[None, :]
        t = times[:, None]
        null = self.null[None, :]
        infinite = torch.isinf(t)
        t_finite = torch.where(infinite, torch.zeros_like(t), t)
        ones = torch.ones_like(lam)
        safe_lam = torch.where(null, ones, lam)
        if discrete:
            base = 1.0 - rate * lam
            g = torch.pow(base, t)
            # (1 - base**t) without cancellation while the base is positive (all small eigenvalues).
            smooth = -torch.expm1(t_finite * torch.log1p(-rate * lam.clamp(max=1.0 / rate * (1 - 1e-12))))
            one_minus_g = torch.where((base > 0) & ~infinite, smooth, 1.0 - g)
        else:
            exponent = -rate * lam * t_finite
            g = torch.where(infinite, torch.zeros_like(lam), torch.exp(exponent))
            one_minus_g = torch.where(infinite, ones, -torch.expm1(exponent))
        h = one_minus_g / safe_lam
        # Zero eigenvalues: nothing moves (g = 1); h -> c t at finite t and the pseudo-inverse (0) at t = inf.
        g = torch.where(null, ones, g)
        h = torch.where(null, torch.where(infinite, torch.zeros_like(h), rate * t_finite * ones), h)
        return g, h


Spectrum.__module__ = "ntkit.analysis"  # its public home


def shifted(kernel: torch.Tensor, diag_reg: float) -> tuple[torch.Tensor, float]:
    """K + diag_reg * trace(K) / n * I and that shift: the one regularisation rule of ntkit."""
    n = kernel.shape[0]
    shift = diag_reg * float(torch.diagonal(kernel).sum()) / n if diag_reg else 0.0
    if shift:
        kernel = kernel + shift * torch.eye(n, dtype=kernel.dtype, device=kernel.device)
    return kernel, shift


def decompose(
    kernel: torch.Tensor,
    *,
    diag_reg: float = 0.0,
    name: str = "k_train_train",
    dtype: torch.dtype | None = None,
) -> Spectrum:
    """The `Spectrum` of a kernel already through `check_kernel`, computed in `dtype` (default: its own).

    Raises ValueError when no eigenvalue is positive (the zero matrix is no usable kernel); warns when one is
    negative beyond round-off (not PSD).
    """
    if dtype is not None:
        kernel = kernel.to(dtype)
    kernel, shift = shifted(kernel, diag_reg)
    values, vectors = torch.linalg.eigh(kernel)
    values, vectors = values.flip(0), vectors.flip(1)
    n = values.shape[0]
    eps = torch.finfo(values.dtype).eps
    largest, smallest = float(values[0]), float(values[-1])
    if not largest > 0:
        raise ValueError(
            f"{name} has no positive eigenvalue (largest {largest:.3g}); it is not a usable kernel"
        )
    if smallest < -math.sqrt(eps) * largest:
        warnings.warn(
            f"{name} is not positive semi-definite: smallest eigenvalue {smallest:.3g} vs largest "
            f"{largest:.3g}; negative eigenvalues are clipped to 0",
            RuntimeWarning,
            stacklevel=external_stacklevel(),
        )
    values = torch.where(values <= n * eps * largest, torch.zeros_like(values), values)
    return Spectrum(values, vectors, diag_reg=diag_reg, shift=shift)


def as_spectrum(value: object, name: str = "k_train_train") -> Spectrum:
    """A given `Spectrum`, or the float64 spectrum of a kernel matrix (checked by `check_kernel`)."""
    if isinstance(value, Spectrum):
        return value
    return decompose(check_kernel(value, name), name=name, dtype=torch.float64)


def warn_conditioning(spectrum: Spectrum, name: str) -> None:
    """Warn when K is singular or ill-conditioned to working precision: what inverting or exponentiating costs."""
    values = spectrum.eigenvalues
    n = values.shape[0]
    eps = torch.finfo(values.dtype).eps
    stacklevel = external_stacklevel()
    if spectrum.rank < n:
        warnings.warn(
            f"{name} is singular to working precision: {n - spectrum.rank} of {n} eigenvalues are below "
            f"{n * eps * spectrum.largest:.3g} (n * eps * largest); those directions never train, and t = inf "
            f"uses the pseudo-inverse. Pass diag_reg > 0 (e.g. 1e-6) to regularise",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    elif spectrum.condition_number * eps > 1e-2:  # fewer than ~2 significant digits survive an inversion
        warnings.warn(
            f"{name} is ill-conditioned (condition number {spectrum.condition_number:.3g}); predictions at "
            f"large t amplify round-off by up to that factor. Consider diag_reg > 0 or float64",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def warn_unstable_rate(learning_rate: float, entries: int, lam_max: float, what: str = "the NTK") -> float:
    """Warn when discrete steps of `learning_rate` diverge (eta >= 2 N / lam_max); return that bound."""
    bound = 2.0 * entries / lam_max
    if learning_rate >= bound:
        warnings.warn(
            f"learning_rate={learning_rate:.6g} is at or above the largest stable rate {bound:.6g} "
            f"(2 N / lam_max of {what}, N = {entries}) of discrete steps: the predicted outputs oscillate and "
            f"diverge",
            RuntimeWarning,
            stacklevel=external_stacklevel(),
        )
    return bound
