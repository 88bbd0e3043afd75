"""Validation at the public boundary: every error names the argument and what was wrong."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
import torch

if TYPE_CHECKING:
    from torch import nn

    from .layers.kernel import Kernel

Array: TypeAlias = torch.Tensor | np.ndarray
"""A tensor or a numpy array: what every public function of ntkit takes as data."""
Times: TypeAlias = float | Sequence[float] | Array | None
"""Times t in gradient steps: a number, a sequence or 1-D array of them, or None for t = inf."""
Outputs: TypeAlias = float | Array
"""Outputs of a model on some points, shaped like the labels; a number is broadcast."""


class HasKernel(Protocol):
    """What the predictors need of an architecture: its infinite-width kernels (e.g. `ntkit.layers.Serial`)."""

    def kernel(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        get: str | Sequence[str] = ("nngp", "ntk"),
        memory_budget: int | None = None,
    ) -> Kernel: ...


class Architecture(HasKernel, Protocol):
    """An architecture description with both worlds: its kernels and its finite network (`ntkit.layers.Layer`)."""

    def build(
        self,
        in_shape: int | Sequence[int],
        seed: int | None = None,
        dtype: torch.dtype = ...,
        device: torch.device | str | None = None,
    ) -> nn.Module: ...


def as_float_tensor(
    value: Any,
    name: str,
    *,
    ndim: int | None = 2,
    like: torch.Tensor | None = None,
    allow_nonfinite: bool = False,
    allow_half: bool = True,
) -> torch.Tensor:
    """Return `value` as a floating torch tensor, checking dtype, rank, device and finiteness.

    numpy arrays are converted without copying where possible. When `like` is given, the result is moved to
    its dtype and device (used to bring a second input into line with the first). Meta tensors (shapes without
    values) are refused; `allow_half=False` refuses float16 and bfloat16 (kernel matrices headed for an
    eigendecomposition or a solve, which torch does not do, and whose 3 digits would not survive one).
    """
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point numbers, got numpy dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {value.dtype}; "
            f"convert it with {name}.double() or {name}.float()"
        )
    if value.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device, which holds a shape but no values; create it on 'cpu' or 'cuda'"
        )
    if not allow_half and value.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"{name} is {value.dtype}, which has too few digits for kernel algebra (eigendecompositions and "
            f"solves need float32 or float64); convert it with {name}.float() or {name}.double()"
        )
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if not allow_nonfinite and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    if like is not None:
        value = value.to(dtype=like.dtype, device=like.device)
    return value


def check_kernel(value: Any, name: str = "k_train_train") -> torch.Tensor:
    """The one check of a kernel of points with themselves, K(X, X): square, non-empty, finite, symmetric.

    Returns the kernel made exactly symmetric, (K + K^T) / 2, in its own dtype and device (float16/bfloat16
    refused: they do not survive an eigendecomposition). The symmetry tolerance is sqrt(eps) of the dtype
    relative to max |K|: round-off in tiled or batched kernel code (float32 empirical NTKs differ from their
    transpose by a few ulps) stays orders of magnitude below it, while a kernel between two different sets of
    points does not. Positive semi-definiteness needs the eigenvalues, so it is judged where they are computed
    (`ntkit.analysis.Spectrum`, with one tolerance for every caller).
    """
    k = as_float_tensor(value, name, ndim=2, allow_half=False)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square kernel matrix K(X, X) (n, n), got shape {tuple(k.shape)}")
    if k.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    scale = float(k.abs().max())
    asymmetry = float((k - k.T).abs().max())
    tolerance = math.sqrt(torch.finfo(k.dtype).eps) * max(scale, torch.finfo(k.dtype).tiny)
    if asymmetry > tolerance:
        raise ValueError(
            f"{name} must be symmetric: max |K - K^T| = {asymmetry:.3g} exceeds {tolerance:.3g} "
            f"(sqrt(eps) * max |K|); pass the kernel of the training points with themselves"
        )
    return (k + k.T) / 2


def check_cross_kernel(value: Any, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """A kernel between m new points and the n training points, (m, n), in `like`'s dtype and device."""
    k = as_float_tensor(value, name, ndim=2, allow_half=False)
    if k.shape[1] != n:
        raise ValueError(
            f"{name} must have shape (m, {n}) (its columns are the training points), got {tuple(k.shape)}"
        )
    return k.to(dtype=like.dtype, device=like.device)


def check_labels(
    value: Any,
    n: int,
    name: str = "y_train",
    *,
    like: torch.Tensor | None = None,
    against: str = "the kernel",
) -> torch.Tensor:
    """The one label-shape check: labels of n points, (n,) or (n, k), finite and floating.

    The result keeps the given rank (1-D labels stay 1-D) and moves to `like`'s dtype and device when given.
    `against` names what fixes n in the message ("the kernel", "x_train").
    """
    y = as_float_tensor(value, name, ndim=None)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) or ({n}, k) to match {against}, got {tuple(y.shape)}"
        )
    return y if like is None else y.to(dtype=like.dtype, device=like.device)


def check_outputs(
    value: Any, rows: int, outputs: int, was_1d: bool, name: str, like: torch.Tensor
) -> torch.Tensor:
    """Initial outputs shaped like the labels, returned as (rows, outputs); a real number is broadcast.

    With 1-D labels, (rows,) and (rows, 1) are both accepted.
    """
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


def check_times(value: Any, name: str, *, discrete: bool, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Times t in gradient steps as a 1-D tensor (inf allowed: kernel regression), and whether one was given.

    None means t = inf. Times must be >= 0; with discrete steps they count steps and must be whole numbers.
    Integer tensors and arrays (step counts, e.g. `TrainingResult.t`) are accepted.
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
            value = torch.as_tensor(value, dtype=like.dtype)
        elif isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool:
            value = value.to(like.dtype)
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
            raise ValueError(f"{name} counts gradient steps when discrete=True and must hold whole numbers")
    return times, scalar


def check_pair(x1: torch.Tensor, x2: torch.Tensor, name1: str = "x1", name2: str = "x2") -> None:
    """Check that two 2-D inputs share their feature dimension."""
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"{name1} and {name2} must have the same number of features, "
            f"got {name1}.shape={tuple(x1.shape)} and {name2}.shape={tuple(x2.shape)}"
        )


def check_real(value: Any, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """Return `value` as a finite float, optionally bounded below (strictly if `strict`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return `value` as an int, optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Return `value` if it is a bool (numpy's included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value
