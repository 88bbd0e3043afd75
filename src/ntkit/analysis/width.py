"""Concentration of the empirical NTK with width, and its drift during training, for a family of widths."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .._loss import REDUCTIONS
from .._validation import (
    Architecture,
    Array,
    as_float_tensor,
    check_choice,
    check_int,
    check_labels,
    check_real,
)

if TYPE_CHECKING:  # imported for the annotation only: ntkit.dynamics imports nothing from here
    from ..dynamics.training import TrainingResult

__all__ = ["KernelDrift", "WidthStudy", "fit_power_law", "kernel_drift", "width_study"]


def fit_power_law(widths: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of log(value) = slope * log(width) + intercept; returns (slope, intercept).

    Non-positive or non-finite values are left out (they have no logarithm); fewer than two usable points give
    (nan, nan).
    """
    points = [
        (math.log(w), math.log(v))
        for w, v in zip(widths, values, strict=True)
        if w > 0 and v > 0 and math.isfinite(v)
    ]
    if len(points) < 2:
        return math.nan, math.nan
    mean_x = sum(p[0] for p in points) / len(points)
    mean_y = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mean_x) ** 2 for p in points)
    if sxx == 0:
        return math.nan, math.nan
    slope = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / sxx
    return slope, mean_y - slope * mean_x


def _seed_list(seeds: int | Sequence[int], name: str) -> list[int]:
    if isinstance(seeds, (int,)) and not isinstance(seeds, bool):
        return list(range(check_int(seeds, name, minimum=1)))
    seeds = [check_int(s, f"{name}[{i}]", minimum=0) for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError(f"{name} must not be empty")
    return seeds


def _width_list(widths: Sequence[int]) -> list[int]:
    widths = [check_int(w, f"widths[{i}]", minimum=1) for i, w in enumerate(widths)]
    if not widths:
        raise ValueError("widths must not be empty")
    return widths


def _architecture(arch: Callable[[int], Architecture], width: int) -> Architecture:
    if not callable(arch):
        raise TypeError(
            "arch must be a function from a width to an architecture, e.g. lambda m: ntkit.layers.mlp(2, m), "
            f"got {type(arch).__name__}"
        )
    description = arch(width)
    if not (hasattr(description, "kernel") and hasattr(description, "build")):
        raise TypeError(
            f"arch({width}) must return an architecture with .kernel and .build, got {description!r}"
        )
    return description


def _relative_frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@dataclass(frozen=True)
class WidthStudy:
    """Relative error of empirical NTKs of finite networks against the infinite-width NTK, by width.

    Attributes:
        widths: the widths m studied.
        seeds: the initialisation seeds drawn at every width.
        errors: (len(widths), len(seeds)) float64, ||T_m - T_inf||_F / ||T_inf||_F per network.
        mean, std: (len(widths),) over seeds (std with Bessel's correction; 0 for one seed).
        slope, intercept: fit of log(mean) = slope log(m) + intercept; the theory predicts slope -1/2.
        reference: the infinite-width NTK T_inf on x.
    """

    widths: list[int]
    seeds: list[int]
    errors: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    slope: float
    intercept: float
    reference: torch.Tensor


def width_study(
    arch: Callable[[int], Architecture],
    x: Array,
    widths: Sequence[int],
    seeds: int | Sequence[int] = 3,
    *,
    method: str = "auto",
    progress: bool | None = None,
) -> WidthStudy:
    """How fast the empirical NTK of finite networks concentrates on the infinite-width NTK.

    For every width m and seed s the network ``arch(m).build(d, seed=s)`` is drawn (in x's dtype, on x's
    device), its empirical NTK T_m(x, x) computed (``ntkit.empirical.empirical_ntk``, outputs="mean") and
    compared with the analytic NTK T_inf of ``arch(widths[-1]).kernel(x)``:

        error(m, s) = ||T_m - T_inf||_F / ||T_inf||_F.

    At initialisation T_m -> T_inf as m -> infinity (Jacot et al. 2018) with fluctuations of order m^-1/2, so
    log(error) against log(m) has slope close to -1/2.

    Args:
        arch: a function from a width to an architecture description, e.g. ``lambda m: mlp(2, m)``.
        x: inputs (n, d).
        widths: the widths to study (at least two for a slope).
        seeds: a number of seeds (0, 1, ...) or the list of seeds to draw at every width.
        method: passed to ``empirical_ntk``.
        progress: show a progress bar (None: only on a terminal).
    """
    from ..empirical import empirical_ntk

    inputs = as_float_tensor(x, "x")
    widths = _width_list(widths)
    seeds = _seed_list(seeds, "seeds")
    reference = _architecture(arch, widths[-1]).kernel(inputs, get="ntk").ntk
    if float(reference.norm()) == 0:
        raise ValueError("the infinite-width NTK of arch on x is zero: nothing is trainable or x is all zero")
    errors = torch.zeros(len(widths), len(seeds), dtype=torch.float64)
    bar = tqdm(total=len(widths) * len(seeds), desc="width study", disable=_quiet(progress), leave=False)
    with bar:
        for i, width in enumerate(widths):
            description = _architecture(arch, width)
            for j, seed in enumerate(seeds):
                model = description.build(
                    inputs.shape[1], seed=seed, dtype=inputs.dtype, device=inputs.device
                )
                finite = empirical_ntk(model, inputs, method=method)
                errors[i, j] = _relative_frobenius(finite, reference)
                bar.update()
    mean = errors.mean(dim=1)
    std = errors.std(dim=1) if len(seeds) > 1 else torch.zeros_like(mean)
    slope, intercept = fit_power_law(widths, mean.tolist())
    return WidthStudy(widths, seeds, errors, mean, std, slope, intercept, reference)


@dataclass(frozen=True)
class KernelDrift:
    """Relative change of the empirical NTK over training, by width.

    Attributes:
        widths, seeds: as studied.
        drift: (len(widths), len(seeds)) float64, ||T_end - T_0||_F / ||T_0||_F on the training inputs.
        mean, std: (len(widths),) over seeds.
        slope, intercept: fit of log(mean drift) against log(width); lazy training predicts slope -1/2 for
            the NTK parametrization at a fixed learning rate (Lee et al. 2019).
        runs: the training results of ``ntkit.dynamics.train`` per width, then per seed, for further analysis.
    """

    widths: list[int]
    seeds: list[int]
    drift: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    slope: float
    intercept: float
    runs: list[list[TrainingResult]] = field(default_factory=list, repr=False)


def kernel_drift(
    arch: Callable[[int], Architecture],
    x_train: Array,
    y_train: Array,
    widths: Sequence[int],
    seeds: int | Sequence[int] = 1,
    *,
    learning_rate: float = 1.0,
    steps: int = 1000,
    reduction: str = "mean",
    x_test: Array | None = None,
    record_every: int | None = None,
    progress: bool | None = None,
) -> KernelDrift:
    """Relative change of the empirical NTK during gradient-descent training, for networks of several widths.

    Each network ``arch(m).build(d, seed=s)`` is trained by full-batch gradient descent on the MSE loss
    (``ntkit.dynamics.train`` with track_ntk=True) and the drift of its NTK on the training inputs is

        drift(m, s) = ||T_m(theta_end) - T_m(theta_0)||_F / ||T_m(theta_0)||_F.

    In the NTK parametrization the parameters move by O(m^-1/2) each while the outputs move by O(1), so the
    kernel freezes as the width grows (Jacot et al. 2018; Lee et al. 2019): drift ~ m^-1/2.

    Args:
        arch: a function from a width to an architecture description.
        x_train, y_train: training inputs (n, d) and targets (n,) or (n, k).
        widths: the widths to train.
        seeds: a number of seeds or the list of seeds.
        learning_rate, steps, reduction: of the gradient descent (see ``ntkit.dynamics.train``).
        x_test: optional test inputs whose outputs are recorded too.
        record_every: record outputs (and the NTK) every this many steps; default ``steps``: only at the start
            and the end, since every record of the NTK costs an empirical-NTK computation.
        progress: show a progress bar (None: only on a terminal).
    """
    from ..dynamics import train

    inputs = as_float_tensor(x_train, "x_train")
    targets = check_labels(y_train, inputs.shape[0], "y_train", like=inputs, against="x_train")
    widths = _width_list(widths)
    seeds = _seed_list(seeds, "seeds")
    check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    steps = check_int(steps, "steps", minimum=1)
    check_choice(reduction, "reduction", REDUCTIONS)
    every = steps if record_every is None else check_int(record_every, "record_every", minimum=1)
    drift = torch.zeros(len(widths), len(seeds), dtype=torch.float64)
    runs: list[list[TrainingResult]] = []
    bar = tqdm(total=len(widths) * len(seeds), desc="kernel drift", disable=_quiet(progress), leave=False)
    with bar:
        for i, width in enumerate(widths):
            description = _architecture(arch, width)
            row = []
            for j, seed in enumerate(seeds):
                model = description.build(
                    inputs.shape[1], seed=seed, dtype=inputs.dtype, device=inputs.device
                )
                result = train(
                    model,
                    inputs,
                    targets,
                    learning_rate=learning_rate,
                    steps=steps,
                    reduction=reduction,
                    x_test=x_test,
                    record_every=every,
                    track_ntk=True,
                )
                drift[i, j] = _final_drift(result)
                row.append(result)
                bar.update()
            runs.append(row)
    mean = drift.mean(dim=1)
    std = drift.std(dim=1) if len(seeds) > 1 else torch.zeros_like(mean)
    slope, intercept = fit_power_law(widths, mean.tolist())
    return KernelDrift(widths, seeds, drift, mean, std, slope, intercept, runs)


def _final_drift(result: TrainingResult) -> float:
    """The relative NTK change at the end of a tracked training run."""
    return float(result.ntk_drift.reshape(-1)[-1])


def _quiet(progress: bool | None) -> bool | None:
    # tqdm's disable=None hides the bar when the output is not a terminal
    return None if progress is None else not progress
