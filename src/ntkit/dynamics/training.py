"""Real gradient-descent training of a finite model on squared loss, recording what the NTK theory predicts.

`train` runs full-batch gradient descent (or minibatch SGD, with momentum if asked) on

    reduction="mean":  L = 1/(2N) sum ||f(x_i) - y_i||^2,  N = number of label entries (of the batch)
    reduction="sum":   L = 1/2 sum ||f(x_i) - y_i||^2

and records the outputs on the training (and test) points, the loss and, with track_ntk, the empirical NTK and
its relative drift ||T_s - T_0||_F / ||T_0||_F, at recorded step counts s. Time convention: after s full-batch
steps of size eta the outputs are compared with `ntkit.predict.gradient_descent_mse(T_0, y, learning_rate=eta,
discrete=True)` at t = s (exact for the linearized model, `ntkit.dynamics.linearize`) or with its
gradient-flow version at t = s (Lee et al. 2019, "Wide neural networks of any depth evolve as linear models
under gradient descent"; Jacot et al. 2018 for the kernel's constancy at infinite width).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .._loss import REDUCTIONS, squared_loss
from .._validation import (
    Array,
    as_float_tensor,
    check_choice,
    check_int,
    check_labels,
    check_pair,
    check_real,
)
from .._warnings import deprecated_alias

__all__ = ["TrainingResult", "train"]


@dataclass(frozen=True)
class TrainingResult:
    """What `train` recorded, at the step counts `t` (R of them, from 0 to the last step).

    Attributes:
        t: (R,) int64 step counts s at which the records were taken; pass them as the t of a closed-form
            predictor (`ntkit.predict`) to compare (formerly `steps`, which now only names a number of steps).
        train_outputs: (R, n, k) outputs on x_train ((R, n) for 1-D labels).
        loss: (R,) the training loss (the chosen reduction, over the whole training set).
        test_outputs: (R, m, k) outputs on x_test, or None.
        test_loss: (R,) loss on (x_test, y_test) with the same reduction, or None.
        ntk: (R, n, n) empirical NTK on x_train ("mean" over outputs) with track_ntk, else None.
        ntk_drift: (R,) ||T_s - T_0||_F / ||T_0||_F with track_ntk, else None.
        learning_rate, reduction, batch_size (None: full batch), momentum: the settings of the run.
    """

    t: torch.Tensor
    train_outputs: torch.Tensor
    loss: torch.Tensor
    test_outputs: torch.Tensor | None
    test_loss: torch.Tensor | None
    ntk: torch.Tensor | None
    ntk_drift: torch.Tensor | None
    learning_rate: float
    reduction: str
    batch_size: int | None
    momentum: float

    steps = deprecated_alias("t", "steps", "TrainingResult")


def _check_examples(x: torch.Tensor, name: str) -> None:
    """Refuse inputs without examples or without features: their loss is 0/0 and their outputs constant."""
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(
            f"{name} has no features (shape {tuple(x.shape)}): the model's outputs cannot depend on it; "
            "pass inputs with at least one feature"
        )


def _check_finite(
    out: torch.Tensor,
    loss: torch.Tensor,
    step: int,
    learning_rate: float,
    entries: int,
    reduction: str,
) -> None:
    """Refuse outputs or a loss that are inf or NaN: a diverged run, whose later records would all be NaN.

    Checked at the recorded steps only (NaN, once there, stays), so a run costs no extra device sync per step.
    """
    if bool(torch.isfinite(loss)) and bool(torch.isfinite(out).all()):
        return
    if step == 0:
        raise ValueError(
            f"the model's outputs or loss on x_train are not finite at step 0, before any training (loss "
            f"{float(loss)} in {out.dtype}): the inputs or the outputs are too large for the dtype; normalise "
            "x_train (and y_train), use float64 (model.double()), or initialise with smaller weights"
        )
    raise ValueError(
        f"training diverged: by step {step} the outputs on x_train or the loss are not finite (loss "
        f"{float(loss)} in {out.dtype}). learning_rate={learning_rate:g} is probably above the largest stable "
        "rate of gradient descent, 2 N / lambda_max of the NTK on x_train; compute it with "
        f"ntkit.dynamics.max_learning_rate(ntk, y_train_size={entries}, reduction={reduction!r}) and stay "
        "below it"
    )


def _default_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        from ..empirical import empirical_ntk
    except ImportError as error:  # pragma: no cover - only while ntkit.empirical is unavailable
        raise ImportError(
            "track_ntk=True needs ntkit.empirical.empirical_ntk, which could not be imported; "
            "pass ntk_fn=(model, x) -> (n, n) kernel instead"
        ) from error
    return empirical_ntk(model, x, outputs="mean")


def _record_schedule(steps: int, record_every: int) -> list[int]:
    recorded = list(range(0, steps + 1, record_every))
    if recorded[-1] != steps:
        recorded.append(steps)
    return recorded


def train(
    model: nn.Module,
    x_train: Array,
    y_train: Array,
    *,
    learning_rate: float,
    steps: int,
    reduction: str = "mean",
    x_test: Array | None = None,
    y_test: Array | None = None,
    record_every: int | None = None,
    track_ntk: bool = False,
    ntk_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    momentum: float = 0.0,
    seed: int | None = None,
    progress: bool | None = None,
) -> TrainingResult:
    """Train `model` in place by gradient descent on squared loss and record its outputs (and NTK) over time.

    Each step is theta <- theta - learning_rate * grad L (torch.optim.SGD; with momentum mu, the heavy-ball
    update v <- mu v + grad L, theta <- theta - learning_rate v). Only parameters with requires_grad move.
    Inputs are moved to the model's dtype and device; results stay there.

    Args:
        model: a torch.nn.Module mapping (n, d) to (n, k) (or (n,) / (n, 1) for 1-D labels); modified in place
            (pass copy.deepcopy(model) to keep the original). Works for `linearize(model)` alike.
        x_train: (n, d) training inputs.
        y_train: (n,) or (n, k) labels.
        learning_rate: eta.
        steps: number of gradient steps.
        reduction: "mean" (1/(2N) sum of squares) or "sum" (1/2 sum), as in `gradient_descent_mse`.
        x_test, y_test: optional test inputs (m, d) to record outputs on, and labels for a test loss.
        record_every: record every this many steps (and always at 0 and at `steps`); default steps // 100.
        track_ntk: also record the empirical NTK on x_train at the recorded steps and its relative drift.
        ntk_fn: how to compute that NTK, (model, x) -> (n, n); default
            `ntkit.empirical.empirical_ntk(model, x, outputs="mean")`.
        batch_size: None for full-batch gradient descent; else minibatch SGD, each step on `batch_size`
            training points drawn without replacement within an epoch (the loss's N is the batch's entries).
        momentum: SGD momentum mu (0 is plain gradient descent).
        seed: seeds the minibatch order.
        progress: show a progress bar (None: only on a terminal).

    Returns:
        A `TrainingResult`.

    Raises:
        ValueError: a bad argument (named), inputs without examples or features, or outputs or a loss that are
            not finite at a recorded step: at step 0 the inputs are too large for the dtype; later, training
            diverged (a learning rate above `max_learning_rate`), so the run stops with the step named rather
            than recording NaN.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    steps = check_int(steps, "steps", minimum=0)
    reduction = check_choice(reduction, "reduction", REDUCTIONS)
    momentum = check_real(momentum, "momentum", minimum=0.0)
    if momentum >= 1.0:
        raise ValueError(f"momentum must be < 1, got {momentum}")
    record_every = (
        max(1, steps // 100) if record_every is None else check_int(record_every, "record_every", minimum=1)
    )
    if not isinstance(track_ntk, bool):
        raise TypeError(f"track_ntk must be a bool, got {type(track_ntk).__name__}")
    if ntk_fn is not None and not callable(ntk_fn):
        raise TypeError(f"ntk_fn must be callable (model, x) -> (n, n), got {type(ntk_fn).__name__}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    reference = trainable[0]

    x_train = as_float_tensor(x_train, "x_train").to(dtype=reference.dtype, device=reference.device)
    _check_examples(x_train, "x_train")
    n = x_train.shape[0]
    y = check_labels(y_train, n, "y_train", like=reference, against="x_train")
    if x_test is not None:
        x_test = as_float_tensor(x_test, "x_test").to(dtype=reference.dtype, device=reference.device)
        _check_examples(x_test, "x_test")
        check_pair(x_test, x_train, "x_test", "x_train")
    if y_test is not None:
        if x_test is None:
            raise ValueError("y_test was given without x_test")
        y_test = check_labels(y_test, x_test.shape[0], "y_test", like=reference, against="x_test")
        if tuple(y_test.shape[1:]) != tuple(y.shape[1:]):
            raise ValueError(
                f"y_test must have shape ({x_test.shape[0]}, ...) like y_train's {tuple(y.shape)}, "
                f"got {tuple(y_test.shape)}"
            )
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        if batch_size > n:
            raise ValueError(f"batch_size must be <= n = {n}, got {batch_size}")
        if batch_size == n:
            batch_size = None

    def forward(x: torch.Tensor, name: str) -> torch.Tensor:
        out = model(x)
        if y.ndim == 1 and out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if tuple(out.shape[1:]) != tuple(y.shape[1:]) or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"model maps {name} of shape {tuple(x.shape)} to outputs of shape {tuple(out.shape)}, "
                f"which do not match y_train's shape {tuple(y.shape)}"
            )
        return out

    compute_ntk = ntk_fn if ntk_fn is not None else _default_ntk
    recorded = _record_schedule(steps, record_every)
    to_record = set(recorded)
    train_outputs, losses, test_outputs, test_losses, kernels = [], [], [], [], []
    optimizer = torch.optim.SGD(trainable, lr=learning_rate, momentum=momentum)
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(check_int(seed, "seed", minimum=0))
    order = torch.empty(0, dtype=torch.long)
    cursor = 0

    def record(out_train: torch.Tensor, step: int) -> None:
        train_outputs.append(out_train.detach().clone())
        losses.append(squared_loss(out_train.detach(), y, reduction))
        _check_finite(train_outputs[-1], losses[-1], step, learning_rate, y.numel(), reduction)
        if x_test is not None:
            with torch.no_grad():
                out_test = forward(x_test, "x_test")
            test_outputs.append(out_test.detach().clone())
            if y_test is not None:
                test_losses.append(squared_loss(out_test, y_test, reduction))
        if track_ntk:
            # The minibatch path records under no_grad; an ntk_fn built on autograd needs gradients.
            with torch.enable_grad():
                kernels.append(compute_ntk(model, x_train).detach())

    bar = tqdm(total=steps, desc="train", disable=None if progress is None else not progress, leave=False)
    try:
        for step in range(steps + 1):
            if batch_size is None:
                out = forward(x_train, "x_train")
                if step in to_record:
                    record(out, step)
                if step == steps:
                    break
                loss = squared_loss(out, y, reduction)
            else:
                if step in to_record:
                    with torch.no_grad():
                        record(forward(x_train, "x_train"), step)
                if step == steps:
                    break
                if cursor + batch_size > order.numel():
                    order = torch.randperm(n, generator=generator).to(x_train.device)
                    cursor = 0
                batch = order[cursor : cursor + batch_size]
                cursor += batch_size
                loss = squared_loss(forward(x_train[batch], "x_train"), y[batch], reduction)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
            if step in to_record:
                bar.set_postfix(loss=f"{float(losses[-1]):.4g}", refresh=False)
    finally:
        bar.close()
    for p in trainable:
        p.grad = None

    ntk = torch.stack(kernels) if track_ntk else None
    drift = None
    if ntk is not None:
        reference_norm = torch.linalg.matrix_norm(ntk[0])
        if float(reference_norm) == 0:
            warnings.warn(
                "the NTK at initialisation is zero on x_train (no trainable parameter moves the outputs), so "
                "its relative drift ||T_s - T_0|| / ||T_0|| is undefined: ntk_drift holds NaN or inf",
                RuntimeWarning,
                stacklevel=2,
            )
        drift = torch.linalg.matrix_norm(ntk - ntk[0]) / reference_norm
    return TrainingResult(
        t=torch.tensor(recorded, dtype=torch.long),
        train_outputs=torch.stack(train_outputs),
        loss=torch.stack(losses),
        test_outputs=torch.stack(test_outputs) if x_test is not None else None,
        test_loss=torch.stack(test_losses) if y_test is not None else None,
        ntk=ntk,
        ntk_drift=drift,
        learning_rate=learning_rate,
        reduction=reduction,
        batch_size=batch_size,
        momentum=momentum,
    )
