"""Convergence of gradient-descent training along the kernel's eigen-directions, predicted and measured."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._loss import REDUCTIONS, label_entries
from .._spectral import Spectrum, as_spectrum, warn_unstable_rate
from .._validation import (
    Array,
    Outputs,
    Times,
    as_float_tensor,
    check_bool,
    check_choice,
    check_labels,
    check_outputs,
    check_real,
    check_times,
)
from .._warnings import STEPS_TO_DISCRETE, deprecated_alias, renamed_keywords

__all__ = ["EigenConvergence", "eigen_convergence"]


@dataclass(frozen=True)
class EigenConvergence:
    """Residuals r_i(t) = v_i . (u(t) - y) along the eigenvectors v_i of the kernel, predicted and measured.

    Attributes:
        eigenvalues: (n,) float64, descending, on K's device.
        rates: (n,) float64, eta * lambda_i / N: the predicted exponential decay rate per step along v_i.
        t: (T,) the times t (in gradient steps) at which the residuals are given (formerly `times`).
        initial: (n,) or (n, k), the residual v_i . (u(0) - y) at t = 0.
        predicted: (T, n) or (T, n, k), the closed-form residual at each time.
        measured: same shape as ``predicted``, the projection of a recorded trajectory, or None.
    """

    eigenvalues: torch.Tensor
    rates: torch.Tensor
    t: torch.Tensor
    initial: torch.Tensor
    predicted: torch.Tensor
    measured: torch.Tensor | None

    times = deprecated_alias("t", "times", "EigenConvergence")

    def fitted_rates(
        self, which: str = "measured", *, floor: float = 1e-8, window: float = 0.0
    ) -> torch.Tensor:
        """Least-squares decay rate of each direction: minus the slope of log ||r_i(t)|| against t.

        Points where ||r_i(t)|| has fallen below ``floor`` times its largest value are left out: there the
        residual is round-off and its logarithm carries no rate. With ``window`` > 0, so are the times at
        which the *predicted* residual has fallen below ``window`` times its initial value: a real network's
        residual along a direction it has learned stalls at the level of its finite-width corrections, and
        only the decay before that tests the predicted rate. Directions with fewer than two usable points
        get NaN. ``which`` is "measured" or "predicted" (the latter recovers ``rates`` on a continuous run).
        """
        check_choice(which, "which", ("measured", "predicted"))
        check_real(floor, "floor", minimum=0.0)
        check_real(window, "window", minimum=0.0)
        residuals = self.measured if which == "measured" else self.predicted
        if residuals is None:
            raise ValueError(
                "fitted_rates('measured') needs a measured trajectory; pass measured= to eigen_convergence"
            )

        def magnitude(values: torch.Tensor) -> torch.Tensor:
            values = values.to(torch.float64)
            return values.abs() if values.ndim == 2 else values.norm(dim=2)

        norms = magnitude(residuals)
        predicted = magnitude(self.predicted).to(norms.device)
        times = self.t.to(device=norms.device, dtype=torch.float64)
        rates = torch.full((norms.shape[1],), float("nan"), dtype=torch.float64, device=norms.device)
        for i in range(norms.shape[1]):
            column = norms[:, i]
            largest = float(column.max())
            keep = column > floor * largest if largest > 0 else column > 0
            if window > 0:
                keep &= predicted[:, i] >= window * predicted[0, i]
            if int(keep.sum()) < 2:
                continue
            t_kept, log_r = times[keep], column[keep].log()
            t_centered = t_kept - t_kept.mean()
            denominator = float((t_centered**2).sum())
            if denominator > 0:
                rates[i] = -float((t_centered * (log_r - log_r.mean())).sum()) / denominator
        return rates


@renamed_keywords(K="k_train_train", y="y_train", f0="fx_train_0", steps=STEPS_TO_DISCRETE)
def eigen_convergence(
    k_train_train: Array | Spectrum,
    y_train: Array,
    fx_train_0: Outputs,
    t: Times,
    *,
    learning_rate: float = 1.0,
    reduction: str = "mean",
    discrete: bool = False,
    measured: Array | None = None,
) -> EigenConvergence:
    """Residual of kernel gradient descent along each eigenvector of K, predicted in closed form and measured.

    Training on the MSE loss with the kernel K held fixed (the infinite-width limit, Jacot et al. 2018; the
    linearized network, Lee et al. 2019) gives u(t) - y = exp(-eta K t / N) (u(0) - y), so in the eigenbasis
    K = sum_i lambda_i v_i v_i^T each residual decays on its own:

        v_i . (u(t) - y) = exp(-eta lambda_i t / N) v_i . (u(0) - y)

    with N the number of label entries for reduction="mean" and N = 1 for "sum" (the conventions of
    docs/architecture.md), and (1 - eta lambda_i / N)^t in place of the exponential for discrete=True
    (plain gradient descent). Directions of large eigenvalue are learned first (Arora et al. 2019, Section 4).
    The decay factors are those of :func:`ntkit.predict.gradient_descent_mse` (`Spectrum.decay`).

    Args:
        k_train_train: the kernel K on the training inputs (n, n), or its :func:`spectrum`.
        y_train: targets y, (n,) or (n, k).
        fx_train_0: the outputs u(0) at t = 0, shaped like y_train (a number is broadcast).
        t: the times (in gradient steps) to evaluate, shape (T,): finite, >= 0, and whole numbers for
            discrete=True (checked as in :func:`ntkit.predict.gradient_descent_mse`).
        learning_rate: eta. With discrete=True, a RuntimeWarning says when it is at or above the stable
            bound 2 N / lambda_max (the predicted residuals then oscillate and grow).
        reduction: "mean" or "sum", as in the loss being trained.
        discrete: False for gradient flow, True for gradient descent with step eta.
        measured: optional recorded outputs u(t) of a real run at the same times, shape (T, n) or (T, n, k);
            their residuals are projected on the same eigenvectors.

    Returns:
        An :class:`EigenConvergence`; ``predicted`` and ``measured`` keep y's dtype and are on K's device.
    """
    spec = as_spectrum(k_train_train)
    n = spec.eigenvalues.shape[0]
    targets = check_labels(y_train, n, "y_train", against="k_train_train")
    was_1d = targets.ndim == 1
    columns = 1 if was_1d else targets.shape[1]
    initial_outputs = check_outputs(fx_train_0, n, columns, was_1d, "fx_train_0", like=targets)
    eta = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    check_choice(reduction, "reduction", REDUCTIONS)
    discrete = check_bool(discrete, "discrete")
    times, _ = check_times(t, "t", discrete=discrete, like=spec.eigenvalues)
    if not bool(torch.isfinite(times).all()):
        raise ValueError("t must hold finite, non-negative times (a measured run has no t = inf)")
    if measured is not None:
        measured = as_float_tensor(measured, "measured", ndim=None)
        expected = (times.shape[0], *targets.shape)
        if tuple(measured.shape) != expected:
            raise ValueError(
                f"measured must have shape {expected} (one row of outputs per time), got "
                f"{tuple(measured.shape)}"
            )

    entries = label_entries(targets, reduction)
    rates = eta * spec.eigenvalues / entries
    # warns as gradient_descent_mse does when (1 - eta lambda_max / N)^t diverges
    if discrete:
        warn_unstable_rate(eta, entries, spec.largest, "k_train_train")
    columns_y = (targets[:, None] if was_1d else targets).to(torch.float64)
    initial = spec.project(initial_outputs.to(torch.float64) - columns_y)  # (n, k) in the eigenbasis
    decay, _ = spec.decay(times, eta / entries, discrete)  # (T, n)
    predicted = decay[:, :, None] * initial[None]
    if was_1d:
        initial, predicted = initial[:, 0], predicted[..., 0]
    measured_residuals = None
    if measured is not None:
        shift = targets.to(dtype=torch.float64, device=spec.eigenvectors.device)
        residual_path = measured.to(dtype=torch.float64, device=spec.eigenvectors.device) - shift
        # (T, n[, k]) -> (T, n[, k]) with the eigen-index in place of the sample index
        measured_residuals = torch.einsum("ji,tj...->ti...", spec.eigenvectors, residual_path).to(
            targets.dtype
        )
    return EigenConvergence(
        eigenvalues=spec.eigenvalues,
        rates=rates,
        t=times,
        initial=initial.to(targets.dtype),
        predicted=predicted.to(targets.dtype),
        measured=measured_residuals,
    )
