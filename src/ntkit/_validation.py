"""Validation at the public boundary: every error names the argument and what was wrong."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


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


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value
