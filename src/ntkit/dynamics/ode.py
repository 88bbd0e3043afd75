"""Outputs of kernel gradient descent on any differentiable loss, by integrating the function-space ODE.

In the linear (infinite-width) regime the outputs on the training points X and on test points x obey
(Jacot et al. 2018; Lee et al. 2019, eq. 6)

    d f_t(X) / dt = -eta T(X, X) grad_f L(f_t(X), y)
    d f_t(x) / dt = -eta T(x, X) grad_f L(f_t(X), y)

with T acting as T (x) I_k on k outputs. For squared loss this is the linear ODE that `gradient_descent_mse`
solves in closed form; for cross-entropy there is no closed form, so the system is integrated here by an
adaptive Dormand-Prince 5(4) Runge-Kutta method in torch (on the kernel's device and dtype). Time convention
as in `gradient_descent_mse`: t counts steps of size eta (gradient flow).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._loss import REDUCTIONS, squared_loss
from .._validation import (
    Array,
    Outputs,
    Times,
    check_choice,
    check_int,
    check_kernel,
    check_labels,
    check_outputs,
    check_real,
    check_times,
)
from ._inputs import check_test_inputs

__all__ = ["ODEPredictor", "gradient_descent"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("cross_entropy", "mse")

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980; Hairer, Norsett & Wanner, Solving ODEs I, table 5.2).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_ERROR = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


def _named_loss(name: str, reduction: str) -> LossFn:
    """Cross-entropy with soft targets (rows of y are class probabilities) or the squared loss of `train`."""
    if name == "cross_entropy":

        def cross_entropy(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            total = -(y * torch.log_softmax(f, dim=-1)).sum()
            return total / f.shape[0] if reduction == "mean" else total

        return cross_entropy

    def squared(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return squared_loss(f, y, reduction)

    return squared


def _integrate(
    rhs: Callable[[torch.Tensor], torch.Tensor],
    state: torch.Tensor,
    times: list[float],
    rtol: float,
    atol: float,
    max_steps: int,
) -> list[torch.Tensor]:
    """Adaptive Dormand-Prince 5(4) for an autonomous system, landing exactly on each (sorted) output time."""
    out: list[torch.Tensor] = []
    now = 0.0
    k1 = rhs(state)
    scale = atol + rtol * state.abs()
    d0 = float(torch.sqrt(torch.mean((state / scale) ** 2)))
    d1 = float(torch.sqrt(torch.mean((k1 / scale) ** 2)))
    step = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6  # Hairer et al.'s starting-step heuristic
    taken = 0
    for target in times:
        while now < target:
            if taken >= max_steps:
                raise RuntimeError(
                    f"the ODE integration took more than max_steps={max_steps} steps before t={target:g}; "
                    f"raise max_steps or loosen rtol/atol"
                )
            h = min(step, target - now)
            stages = [k1]
            for i in range(1, 7):
                increment = sum(a * k for a, k in zip(_A[i], stages, strict=False) if a != 0.0)
                stages.append(rhs(state + h * increment))
            new_state = state + h * sum(b * k for b, k in zip(_B5, stages, strict=True) if b != 0.0)
            error = h * sum(e * k for e, k in zip(_ERROR, stages, strict=True) if e != 0.0)
            tolerance = atol + rtol * torch.maximum(state.abs(), new_state.abs())
            norm = float(torch.sqrt(torch.mean((error / tolerance) ** 2)))
            taken += 1
            if norm <= 1.0:
                now = target if h == target - now else now + h
                state = new_state
                k1 = stages[6]  # first-same-as-last
            elif h < 1e-14 * max(1.0, abs(now)):
                cause = "a non-finite error estimate" if not math.isfinite(norm) else f"error {norm:.3g}"
                raise RuntimeError(
                    f"the ODE integration failed at t={now:g}: step size underflow (h={h:.3g}) with {cause}; "
                    f"either the loss or its gradient is not finite there (check the loss, the kernel and "
                    f"fx_train_0) or the system is too stiff for rtol={rtol:g}, atol={atol:g}"
                )
            if not math.isfinite(norm):
                step = h / 10
                continue
            factor = 0.9 * norm ** (-0.2) if norm > 0 else 5.0
            step = h * min(5.0, max(0.2, factor))
        out.append(state)
    return out


class ODEPredictor:
    """Outputs of kernel gradient descent on a general loss at time(s) t. Made by `gradient_descent`.

    Call as `predict(t, fx_train_0, fx_test_0=None, k_test_train=None)`: train outputs, or (train, test).
    """

    def __init__(
        self,
        loss: str | LossFn,
        k_train_train: Array,
        y_train: Array,
        *,
        learning_rate: float,
        reduction: str,
        rtol: float | None,
        atol: float | None,
        max_steps: int,
    ) -> None:
        reduction = check_choice(reduction, "reduction", REDUCTIONS)
        if isinstance(loss, str):
            self.loss = _named_loss(check_choice(loss, "loss", LOSSES), reduction)
        elif callable(loss):
            self.loss = loss
        else:
            raise TypeError(
                f"loss must be 'cross_entropy', 'mse' or a callable (fx, y) -> scalar, "
                f"got {type(loss).__name__}"
            )
        self.learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
        k = check_kernel(k_train_train, "k_train_train")
        self._k = k
        y = check_labels(y_train, k.shape[0], "y_train", like=k, against="k_train_train")
        self._y_was_1d = y.ndim == 1
        self._y = y[:, None] if self._y_was_1d else y
        if isinstance(loss, str) and loss == "cross_entropy" and (self._y_was_1d or self._y.shape[1] < 2):
            # log_softmax over a 1-D or single-column y would normalise across training points (or give 0).
            shape = (k.shape[0],) if self._y_was_1d else tuple(self._y.shape)
            raise ValueError(
                f"y_train must be 2-D (n, k) with k >= 2 class columns for loss='cross_entropy' (rows are "
                f"class probabilities, e.g. one-hot), got shape {shape}"
            )
        eps = torch.finfo(k.dtype).eps
        self.rtol = (
            check_real(rtol, "rtol", minimum=0.0, strict=True) if rtol is not None else max(1e-9, 100 * eps)
        )
        self.atol = (
            check_real(atol, "atol", minimum=0.0, strict=True) if atol is not None else self.rtol * 1e-2
        )
        self.max_steps = check_int(max_steps, "max_steps", minimum=1)

    def _loss_gradient(self, f: torch.Tensor) -> torch.Tensor:
        y = self._y[:, 0] if self._y_was_1d else self._y
        with torch.enable_grad():
            leaf = (f[:, 0] if self._y_was_1d else f).detach().requires_grad_(True)
            value = self.loss(leaf, y)
            if value.ndim != 0:
                raise ValueError(f"loss must return a scalar, got shape {tuple(value.shape)}")
            (grad,) = torch.autograd.grad(value, leaf)
        return grad[:, None] if self._y_was_1d else grad

    def __call__(
        self,
        t: Times,
        fx_train_0: Outputs = 0.0,
        fx_test_0: Outputs | None = None,
        k_test_train: Array | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Outputs at time(s) t (finite, >= 0; a 1-D tensor adds a leading time axis), as in the MSE case."""
        k = self._k
        n, outputs = self._y.shape
        times, scalar = check_times(t, "t", discrete=False, like=k)
        if bool(torch.isinf(times).any()):
            raise ValueError("t must be finite for a general loss (cross-entropy has no t = inf limit)")
        f0 = check_outputs(fx_train_0, n, outputs, self._y_was_1d, "fx_train_0", k)
        cross, f0_test = check_test_inputs(k_test_train, fx_test_0, n, outputs, self._y_was_1d, k)
        # One system for train and test rows: the test rows follow the gradient at the train rows.
        driver = k if cross is None else torch.cat([k, cross], dim=0)
        state0 = f0 if cross is None else torch.cat([f0, f0_test], dim=0)

        def rhs(state: torch.Tensor) -> torch.Tensor:
            return -self.learning_rate * (driver @ self._loss_gradient(state[:n]))

        order = torch.argsort(times)
        sorted_times = [float(v) for v in times[order]]
        states = _integrate(rhs, state0, sorted_times, self.rtol, self.atol, self.max_steps)
        stacked = torch.stack(states)[torch.argsort(order)]  # (T, n [+ m], k)
        if self._y_was_1d:
            stacked = stacked[..., 0]
        if scalar:
            stacked = stacked[0]
        if cross is None:
            return stacked
        rows = stacked.ndim - (1 if self._y_was_1d else 2)
        return stacked.narrow(rows, 0, n), stacked.narrow(rows, n, stacked.shape[rows] - n)


def gradient_descent(
    loss: str | LossFn,
    k_train_train: Array,
    y_train: Array,
    *,
    learning_rate: float = 1.0,
    reduction: str = "mean",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
) -> ODEPredictor:
    """Outputs of kernel gradient descent (gradient flow) on any loss, by integrating the function-space ODE.

    See the module docstring for the ODE. Means only: fed zero initial outputs this is the infinite ensemble's
    mean-field prediction; under a non-quadratic loss the outputs are not Gaussian, so no covariance is given.

    Args:
        loss: "cross_entropy" (soft targets: rows of y_train are class probabilities, e.g. one-hot; L = -sum
            y log softmax(f), divided by n for reduction="mean"), "mse" (as in `gradient_descent_mse`), or a
            callable (fx_train, y_train) -> scalar tensor, differentiable by autograd (then `reduction` is
            ignored: the callable is the loss).
        k_train_train: NTK on the training points (n, n); results take its dtype and device.
        y_train: (n,) or (n, k) targets; (n, k) with k >= 2 class columns for "cross_entropy".
        learning_rate: eta; t counts steps of size eta.
        reduction: "mean" or "sum" for the named losses.
        rtol, atol: integration tolerances (default 100 eps or 1e-9, whichever is larger; atol = rtol / 100).
        max_steps: cap on integrator steps per call.

    Returns:
        An `ODEPredictor`: `predict(t, fx_train_0, fx_test_0=None, k_test_train=None)`.
    """
    return ODEPredictor(
        loss, k_train_train, y_train,
        learning_rate=learning_rate, reduction=reduction, rtol=rtol, atol=atol, max_steps=max_steps,
    )  # fmt: skip
