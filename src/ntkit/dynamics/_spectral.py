"""Shared numerics of the closed-form dynamics: input checks, one cached eigendecomposition, decay factors.

Everything in ntkit.dynamics that solves the linear MSE dynamics works in the eigenbasis of the (regularised)
training kernel T = V diag(lam) V^T. With c = learning_rate / N (N = number of label entries for
reduction="mean", 1 for "sum"), the two functions of T that every formula needs are, per eigenvalue lam,

    g(lam, t) = exp(-c lam t)                 (gradient flow)      or (1 - c lam)**t (discrete steps)
    h(lam, t) = (1 - g(lam, t)) / lam         -> c t as lam -> 0,  and 1 / lam at t = inf (0 for lam = 0)

so that exp(-c T t) = V diag(g) V^T and T^-1 (I - exp(-c T t)) = V diag(h) V^T (Lee et al. 2019, eqs. 8-9).
h is computed without cancellation (expm1 / log1p), so tiny eigenvalues give the right small-lam limit instead
of round-off, and eigenvalues that are zero to working precision give the pseudo-inverse at t = inf.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from .._validation import as_float_tensor, check_real

REDUCTIONS = ("mean", "sum")
STEP_KINDS = ("continuous", "discrete")


def check_train_kernel(value: Any, name: str = "k_train_train") -> torch.Tensor:
    """Return a square, finite, symmetric training kernel, symmetrised exactly ((K + K^T) / 2).

    The symmetry tolerance is sqrt(eps) of the dtype relative to max |K|: round-off in tiled or batched kernel
    code stays orders of magnitude below it, while a kernel between two different sets of points does not.
    """
    k = as_float_tensor(value, name, ndim=2, allow_half=False)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be square (n, n), got shape {tuple(k.shape)}")
    if k.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    scale = float(k.abs().max())
    asym = float((k - k.T).abs().max())
    tol = math.sqrt(torch.finfo(k.dtype).eps) * max(scale, torch.finfo(k.dtype).tiny)
    if asym > tol:
        raise ValueError(
            f"{name} must be symmetric: max |K - K^T| = {asym:.3g} exceeds {tol:.3g} (sqrt(eps) * max |K|); "
            f"pass the kernel of the training points with themselves"
        )
    return (k + k.T) / 2


def check_labels(value: Any, n: int, name: str, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return labels as an (n, k) tensor in `like`'s dtype and device, and whether they were given 1-D."""
    y = as_float_tensor(value, name, ndim=None)
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (n,) or 2-D (n, k), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} rows but the training kernel is {n} x {n}")
    was_1d = y.ndim == 1
    y = y.to(dtype=like.dtype, device=like.device)
    return (y[:, None] if was_1d else y), was_1d


def check_outputs(
    value: Any, rows: int, outputs: int, was_1d: bool, name: str, like: torch.Tensor
) -> torch.Tensor:
    """Initial outputs of shape (rows, outputs) (or (rows,) for 1-D labels); a real number is broadcast."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        fill = check_real(value, name)
        return torch.full((rows, outputs), fill, dtype=like.dtype, device=like.device)
    f = as_float_tensor(value, name, ndim=None)
    expected = (rows,) if was_1d else (rows, outputs)
    if was_1d and tuple(f.shape) == (rows, 1):
        f = f[:, 0]
    if tuple(f.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} to match the labels, got {tuple(f.shape)}")
    f = f.to(dtype=like.dtype, device=like.device)
    return f[:, None] if was_1d else f


def check_cross_kernel(value: Any, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """A test-train kernel of shape (m, n) in `like`'s dtype and device."""
    k = as_float_tensor(value, name, ndim=2, allow_half=False)
    if k.shape[1] != n:
        raise ValueError(
            f"{name} must have shape (m, {n}) (its columns are the training points), got {tuple(k.shape)}"
        )
    return k.to(dtype=like.dtype, device=like.device)


def check_test_inputs(
    k_test_train: Any, fx_test_0: Any, n: int, outputs: int, was_1d: bool, like: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The test-train kernel (m, n) and the test points' initial outputs (zero when not given), or (None, None)."""
    if k_test_train is None:
        if fx_test_0 is not None:
            raise ValueError("fx_test_0 was given without k_test_train: pass the test-train NTK as well")
        return None, None
    cross = check_cross_kernel(k_test_train, n, "k_test_train", like)
    m = cross.shape[0]
    if fx_test_0 is None:
        return cross, torch.zeros((m, outputs), dtype=like.dtype, device=like.device)
    return cross, check_outputs(fx_test_0, m, outputs, was_1d, "fx_test_0", like)


def as_times(value: Any, name: str, *, discrete: bool, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Times as a 1-D tensor (inf allowed: kernel regression) and whether a scalar was given.

    None means t = inf. Times must be >= 0; with discrete steps they count steps and must be whole numbers.
    """
    if value is None:
        value = math.inf
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a 1-D tensor of times, got bool")
    if isinstance(value, (int, float, np.integer, np.floating)):
        times = torch.tensor([float(value)], dtype=like.dtype, device=like.device)
        scalar = True
    else:
        if isinstance(value, (list, tuple)):
            value = torch.tensor([float(v) for v in value], dtype=like.dtype)
        elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer):
            value = torch.as_tensor(value, dtype=like.dtype)  # step counts
        elif isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool:
            value = value.to(like.dtype)  # step counts, e.g. torch.arange(steps)
        times = as_float_tensor(value, name, ndim=None, allow_nonfinite=True)
        if times.ndim > 1:
            raise ValueError(
                f"{name} must be a scalar or a 1-D tensor of times, got shape {tuple(times.shape)}"
            )
        scalar = times.ndim == 0
        times = times.reshape(-1).to(dtype=like.dtype, device=like.device)
    if bool(torch.isnan(times).any()):
        raise ValueError(f"{name} contains NaN")
    if bool((times < 0).any()):
        raise ValueError(
            f"{name} must be >= 0 (non-negative times since initialisation), got min {float(times.min())}"
        )
    if discrete:
        finite = times[torch.isfinite(times)]
        if bool((finite != torch.round(finite)).any()):
            raise ValueError(
                f"{name} counts gradient steps when steps='discrete' and must hold whole numbers"
            )
    return times, scalar


def label_entries(y: torch.Tensor, reduction: str) -> int:
    """N of the loss 1/(2N) sum ||f - y||^2: the number of label entries for "mean", 1 for "sum"."""
    return y.numel() if reduction == "mean" else 1


def warn_unstable_rate(learning_rate: float, entries: int, lam_max: float, *, stacklevel: int) -> float:
    """Warn when discrete steps of `learning_rate` diverge (eta >= 2 N / lam_max); return that bound.

    `stacklevel` counts from the caller of this function, as in `warnings.warn`.
    """
    bound = 2.0 * entries / lam_max
    if learning_rate >= bound:
        warnings.warn(
            f"learning_rate={learning_rate:.6g} is at or above the largest stable rate {bound:.6g} "
            f"(2 N / lam_max, N = {entries}) of discrete steps: the predicted outputs oscillate and diverge",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
    return bound


class Spectrum:
    """Eigendecomposition of a regularised PSD training kernel, with eigenvalues at round-off level set to 0.

    `diag_reg` adds diag_reg * trace(K) / n to the diagonal (docs/architecture.md). Eigenvalues at or below
    n * eps * lam_max (the rank cutoff of numpy.linalg.matrix_rank) are treated as exactly zero: negative ones
    are round-off of a PSD matrix and are clipped; the directions they span do not move under the dynamics.
    """

    def __init__(self, k: torch.Tensor, diag_reg: float, name: str) -> None:
        n = k.shape[0]
        self.name = name
        self.diag_reg = diag_reg
        self.shift = diag_reg * float(torch.diagonal(k).sum()) / n
        if self.shift:
            k = k + self.shift * torch.eye(n, dtype=k.dtype, device=k.device)
        eigenvalues, eigenvectors = torch.linalg.eigh(k)
        eps = torch.finfo(k.dtype).eps
        lam_max = float(eigenvalues[-1])
        lam_min = float(eigenvalues[0])
        if not lam_max > 0:
            raise ValueError(
                f"{name} has no positive eigenvalue (largest {lam_max:.3g}); it is not a usable kernel"
            )
        cutoff = n * eps * lam_max
        if lam_min < -math.sqrt(eps) * lam_max:
            warnings.warn(
                f"{name} is not positive semi-definite: smallest eigenvalue {lam_min:.3g} vs largest "
                f"{lam_max:.3g}; negative eigenvalues are clipped to 0",
                RuntimeWarning,
                stacklevel=4,
            )
        self.null = eigenvalues <= cutoff
        self.rank = n - int(self.null.sum())
        self.eigenvalues = torch.where(self.null, torch.zeros_like(eigenvalues), eigenvalues)
        self.eigenvectors = eigenvectors
        self.lam_max = lam_max
        positive = self.eigenvalues[~self.null]
        self.condition = lam_max / float(positive.min())
        if self.rank < n:
            warnings.warn(
                f"{name} is singular to working precision: {n - self.rank} of {n} eigenvalues are below "
                f"{cutoff:.3g} (n * eps * largest); those directions never train, and t = inf uses the "
                f"pseudo-inverse. Pass diag_reg > 0 (e.g. 1e-6) to regularise",
                RuntimeWarning,
                stacklevel=4,
            )
        elif self.condition * eps > 1e-2:  # fewer than ~2 significant digits survive an inversion
            warnings.warn(
                f"{name} is ill-conditioned (condition number {self.condition:.3g}); predictions at large t "
                f"amplify round-off by up to that factor. Consider diag_reg > 0 or float64",
                RuntimeWarning,
                stacklevel=4,
            )

    def max_learning_rate(self, entries: int) -> float:
        """Largest stable discrete rate: |1 - eta lam / N| < 1 for every lam iff eta < 2N / lam_max."""
        return 2.0 * entries / self.lam_max

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
