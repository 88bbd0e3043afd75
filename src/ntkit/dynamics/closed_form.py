"""Closed-form outputs of a network trained by gradient descent on squared loss, given its NTK (Lee et al.).

A network that stays in its linear regime (infinite width, or its linearization; Jacot et al. 2018; Lee et al.
2019, "Wide neural networks of any depth evolve as linear models under gradient descent") trained on the loss

    reduction="sum":   L = 1/2 sum ||f(x_i) - y_i||^2                     (N = 1)
    reduction="mean":  L = 1/(2N) sum ||f(x_i) - y_i||^2, N = y.numel()   (what training code usually does)

with learning rate eta has, with T = T(X, X) its NTK on the training points,

    f_t(X) = y + exp(-eta T t / N) (f_0(X) - y)
    f_t(x) = f_0(x) + T(x, X) T^-1 (I - exp(-eta T t / N)) (y - f_0(X))

for gradient flow (discrete=False), and the same with exp(-eta T t / N) replaced by (I - eta T / N)**t for
plain gradient-descent steps (discrete=True). Time convention: t counts gradient steps of size eta in both
cases, so a real run of s steps is compared with t = s (exactly for discrete steps; as its gradient-flow
limit for continuous ones). t = inf is kernel regression. With k outputs the kernel acts as T (x) I_k: each
output column evolves independently with the same T.
"""

from __future__ import annotations

import torch

from .._loss import REDUCTIONS, label_entries
from .._spectral import Spectrum, decompose, shifted, warn_conditioning, warn_unstable_rate
from .._validation import (
    Array,
    Outputs,
    Times,
    check_bool,
    check_choice,
    check_int,
    check_kernel,
    check_labels,
    check_outputs,
    check_real,
    check_times,
)
from .._warnings import DISCRETE_TO_STEPS, STEPS_TO_DISCRETE, deprecated_alias, renamed_keywords
from . import _scalable
from ._inputs import check_test_inputs

__all__ = ["MSEPredictor", "gradient_descent_mse", "max_learning_rate"]


def max_learning_rate(
    k_train_train: Array,
    *,
    y_train_size: int | None = None,
    reduction: str = "mean",
    diag_reg: float = 0.0,
) -> float:
    """The largest learning rate for which discrete gradient descent on squared loss converges: 2 N / lam_max.

    Gradient descent multiplies the residual's component along an eigenvector of T by (1 - eta lam / N) per
    step, so it converges iff eta < 2 N / lam_max (Lee et al. 2019, sec. 2.4; beyond it the top direction
    oscillates with growing amplitude). Below N / lam_max every direction decays monotonically.

    Args:
        k_train_train: the NTK on the training points, (n, n), symmetric positive semi-definite.
        y_train_size: N for reduction="mean", the number of label entries (n * outputs); default n.
        reduction: "mean" or "sum" (N = 1), as in `gradient_descent_mse`.
        diag_reg: the regularisation of `gradient_descent_mse` (adds diag_reg * trace(T) / n to the diagonal).
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
    k = check_kernel(k_train_train, "k_train_train")
    n = k.shape[0]
    entries = n if y_train_size is None else check_int(y_train_size, "y_train_size", minimum=n)
    if reduction == "sum":
        entries = 1
    k, _ = shifted(k, diag_reg)
    lam_max = float(torch.linalg.eigvalsh(k)[-1])
    if not lam_max > 0:
        raise ValueError(f"k_train_train has no positive eigenvalue (largest {lam_max:.3g})")
    return 2.0 * entries / lam_max


class MSEPredictor:
    """Outputs of squared-loss gradient descent at any time t, from one cached eigendecomposition of T.

    Made by `gradient_descent_mse`; call it as `predict(t, fx_train_0, fx_test_0=None, k_test_train=None)`.
    Attributes: `spectrum` (the `ntkit.analysis.Spectrum` of the regularised T: eigenvalues descending,
    round-off ones set to 0; `eigenvalues` and `eigenvectors` are its), `max_learning_rate` (2 N / lam_max,
    the discrete-step stability bound), `learning_rate`, `reduction`, `discrete`, `label_entries` (N),
    `solver` (the route taken: "eigh", or "cholesky"/"cg" for t = inf only; then `spectrum` and the
    attributes drawn from it are None).
    """

    @renamed_keywords(steps=STEPS_TO_DISCRETE)
    def __init__(
        self,
        k_train_train: Array,
        y_train: Array,
        *,
        learning_rate: float,
        diag_reg: float,
        reduction: str,
        discrete: bool,
        solver: str = "auto",
    ) -> None:
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)
        self.discrete = check_bool(discrete, "discrete")
        self.learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
        self.diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
        k = check_kernel(k_train_train, "k_train_train")
        y = check_labels(y_train, k.shape[0], "y_train", like=k, against="k_train_train")
        self._y_was_1d = y.ndim == 1
        self._y = y[:, None] if self._y_was_1d else y
        self._like = k
        self.label_entries = label_entries(self._y, self.reduction)
        self._rate = self.learning_rate / self.label_entries
        n = k.shape[0]
        self.solver = _scalable.choose(solver, n, k.dtype, k.device, 0, "gradient_descent_mse")
        self.spectrum: Spectrum | None = None
        self.max_learning_rate: float | None = None
        if self.solver != "eigh":
            # t = inf only: kernel regression by a solve (the eigendecomposition does not fit, or was declined)
            return
        self.spectrum = decompose(k, diag_reg=self.diag_reg, name="k_train_train")
        warn_conditioning(self.spectrum, "k_train_train")
        self.max_learning_rate = self.spectrum.max_learning_rate(self.label_entries)
        if self.discrete:
            warn_unstable_rate(self.learning_rate, self.label_entries, self.spectrum.largest, "k_train_train")

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        """`spectrum.eigenvalues`: those of the regularised T, descending (None without the eigendecomposition)."""
        return None if self.spectrum is None else self.spectrum.eigenvalues

    @property
    def eigenvectors(self) -> torch.Tensor | None:
        """`spectrum.eigenvectors`, column i for `eigenvalues[i]`."""
        return None if self.spectrum is None else self.spectrum.eigenvectors

    steps = deprecated_alias("discrete", "steps", "MSEPredictor", DISCRETE_TO_STEPS)

    def __call__(
        self,
        t: Times = None,
        fx_train_0: Outputs = 0.0,
        fx_test_0: Outputs | None = None,
        k_test_train: Array | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Train outputs at time(s) t, or (train, test) outputs when `k_test_train` is given.

        Args:
            t: a number of steps (scalar), a 1-D tensor of them (the results get a leading time axis), or
                None / inf for kernel regression. Must be >= 0, and whole numbers when discrete=True.
            fx_train_0: the outputs at initialisation on the training points, shaped like y_train (a number is
                broadcast; 0 is the usual choice for an ensemble-mean prediction).
            fx_test_0: initial outputs on the test points, (m,) or (m, k); default 0.
            k_test_train: the NTK between test and training points, (m, n).
        """
        like = self._like
        n, outputs = self._y.shape
        times, scalar = check_times(t, "t", discrete=self.discrete, like=like)
        f0 = check_outputs(fx_train_0, n, outputs, self._y_was_1d, "fx_train_0", like)
        k_cross, f0_test = check_test_inputs(k_test_train, fx_test_0, n, outputs, self._y_was_1d, like)

        if self.spectrum is None:
            _scalable.require_infinite(times, self.solver)
            coef = _scalable.solve(like, self._y - f0, self.diag_reg, self.solver)
            # t = inf on the training points: the (regularised, positive-definite) dynamics reach y exactly
            train = self._shape(self._y.clone().expand(times.numel(), *self._y.shape), scalar)
            if k_cross is None:
                return train
            test = f0_test + k_cross @ coef
            return train, self._shape(test.expand(times.numel(), *test.shape), scalar)
        g, h = self.spectrum.decay(times, self._rate, self.discrete)
        v = self.spectrum.eigenvectors
        residual = v.T @ (f0 - self._y)  # (n, k) in the eigenbasis
        train = self._y + _apply_modes(v, g, residual)
        train = self._shape(train, scalar)
        if k_cross is None:
            return train
        test = f0_test - _apply_modes(k_cross @ v, h, residual)
        return train, self._shape(test, scalar)

    def _shape(self, out: torch.Tensor, scalar: bool) -> torch.Tensor:
        if self._y_was_1d:
            out = out[..., 0]
        return out[0] if scalar else out


def _apply_modes(left: torch.Tensor, weights: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """left @ diag(weights[s]) @ coefficients for every time s, as one matrix product: (T, rows, k)."""
    count, n = weights.shape
    k = coefficients.shape[1]
    scaled = weights[:, :, None] * coefficients[None, :, :]  # (T, n, k)
    stacked = scaled.permute(1, 0, 2).reshape(n, count * k)
    out = left @ stacked  # (rows, T * k)
    return out.reshape(left.shape[0], count, k).permute(1, 0, 2)


@renamed_keywords(steps=STEPS_TO_DISCRETE)
def gradient_descent_mse(
    k_train_train: Array,
    y_train: Array,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    reduction: str = "mean",
    discrete: bool = False,
    solver: str = "auto",
) -> MSEPredictor:
    """Closed-form outputs of squared-loss gradient descent with NTK `k_train_train` (Lee et al. 2019, eq. 9).

    See the module docstring for the formulas and the time convention (t = number of steps of size
    learning_rate). The kernel is decomposed once here (T + diag_reg * trace(T)/n * I = V diag(lam) V^T);
    every call of the returned predictor is then matrix products only, for any number of times.

    Args:
        k_train_train: NTK on the training points, (n, n), symmetric PSD (e.g. `arch.kernel(x).ntk`, or
            `empirical_ntk(model, x)`). Results take its dtype and device.
        y_train: labels, (n,) or (n, k); with k outputs the kernel acts as T (x) I_k.
        learning_rate: eta.
        diag_reg: adds diag_reg * trace(T) / n to T's diagonal; use it for singular kernels (duplicates).
        reduction: "mean" (loss 1/(2N) sum of squares over N = y.numel() entries) or "sum" (1/2 sum).
        discrete: False for gradient flow (exp(-eta T t / N)), True for plain gradient-descent steps
            ((I - eta T / N)**t; t must then be whole numbers). Formerly steps="continuous" / "discrete".
        solver: "auto" (the eigendecomposition when it fits in memory, else t = inf only, by Cholesky or
            preconditioned CG from `ntkit.linalg`), "eigh", "cholesky" or "cg"; the route taken is the
            predictor's `solver` attribute. Without "eigh", only t = inf (kernel regression) can be predicted.

    Returns:
        An `MSEPredictor`: `predict(t, fx_train_0, fx_test_0=None, k_test_train=None)`.

    Warns:
        RuntimeWarning when T is singular or ill-conditioned to working precision (use diag_reg), and when
        discrete=True and learning_rate is at or above the stable bound 2 N / lam_max (which it states).
    """
    return MSEPredictor(
        k_train_train,
        y_train,
        learning_rate=learning_rate,
        diag_reg=diag_reg,
        reduction=reduction,
        discrete=discrete,
        solver=solver,
    )
