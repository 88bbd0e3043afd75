"""The validated description of one empirical NTK computation, shared by the methods, and its validation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_choice, check_int, check_real
from . import _checks
from ._batching import DEFAULT_EMPIRICAL_BUDGET

OUTPUTS = ("mean", "diagonal", "full")
METHODS = ("auto", "jacobian", "ntk-vp", "layerwise")

_PROBE_EXAMPLES = 3  # enough to plan the layerwise method on; small enough to cost a few forward passes


@dataclass
class Problem:
    """Everything a method needs, already checked.

    `params` maps the canonical names (as in `model.named_parameters()`) of the parameters the NTK sums over
    to detached views of them; `k` is the number of outputs per example; `mode` the `outputs` argument.
    """

    model: nn.Module
    params: dict[str, torch.Tensor]
    k: int
    mode: str
    dtype: torch.dtype
    device: torch.device
    batch_size: int | None
    progress: bool | None
    budget: int

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def tail(self) -> tuple[int, ...]:
        """Trailing shape of the result after (n1, n2)."""
        return {"mean": (), "diagonal": (self.k,), "full": (self.k, self.k)}[self.mode]

    @property
    def k_pairs(self) -> int:
        """Output pairs (a, b) a contraction forms: k*k for "full", k otherwise."""
        return self.k * self.k if self.mode == "full" else self.k


def _as_input(value: Any, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """x as a tensor of examples along axis 0: floating inputs in the model's dtype, integer inputs kept."""
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise TypeError(
                f"{name} must hold floating-point or integer numbers, got numpy dtype {value.dtype}"
            )
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(
            f"{name} must have a floating dtype (or an integer dtype for models that embed tokens), got "
            f"{value.dtype}"
        )
    if value.ndim == 0 or value.shape[0] == 0:
        raise ValueError(
            f"{name} must hold at least one example along axis 0, got shape {tuple(value.shape)}"
        )
    if value[0].numel() == 0:
        raise ValueError(
            f"{name} has no features: its examples have shape {tuple(value.shape[1:])}, with no entries, so "
            "the model's outputs cannot depend on them; pass inputs with at least one feature"
        )
    if value.device != device:
        raise ValueError(
            f"{name} is on {value.device} but the model's parameters are on {device}; move one of them, "
            f"e.g. {name}.to({str(device)!r})"
        )
    if value.is_floating_point():
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
        value = value.to(dtype)
    return value.detach()


def as_inputs(
    x1: Any, x2: Any, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x1 and x2 (or None) as inputs of one kind: the same shape after the example axis, both floating or both
    integer."""
    x1 = _as_input(x1, "x1", dtype, device)
    if x2 is None:
        return x1, None
    x2 = _as_input(x2, "x2", dtype, device)
    if x2.shape[1:] != x1.shape[1:]:
        raise ValueError(
            f"x1 and x2 must have the same shape after the example axis, got x1.shape={tuple(x1.shape)} "
            f"and x2.shape={tuple(x2.shape)}"
        )
    if x2.is_floating_point() != x1.is_floating_point():
        raise TypeError(f"x1 and x2 must both be floating or both integer, got {x1.dtype} and {x2.dtype}")
    return x1, x2


def _select_params(model: nn.Module, params: Any) -> dict[str, torch.Tensor]:
    """Canonical name -> parameter for the parameters the NTK sums over."""
    canonical = dict(model.named_parameters())
    by_id = {id(p): name for name, p in canonical.items()}
    aliases = {name: by_id[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}
    if params is None:
        chosen = [name for name, p in canonical.items() if p.requires_grad]
        if not chosen:
            raise ValueError(
                "model has no parameters with requires_grad=True, so its NTK is zero; unfreeze some or "
                "pass params= explicitly"
            )
        return {name: canonical[name] for name in chosen}
    if isinstance(params, (str, torch.Tensor)):
        params = [params]
    if isinstance(params, dict) or not isinstance(params, Iterable):
        raise TypeError(
            f"params must be None or a sequence of parameter names or tensors, got {type(params).__name__}"
        )
    chosen: list[str] = []
    for i, item in enumerate(params):
        if isinstance(item, str):
            if item not in aliases:
                known = ", ".join(list(aliases)[:8]) + (", ..." if len(aliases) > 8 else "")
                raise ValueError(f"params[{i}]={item!r} is not a parameter of the model (it has: {known})")
            name = aliases[item]
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise ValueError(
                    f"params[{i}] (a tensor of shape {tuple(item.shape)}) is not a parameter of the model; "
                    "pass the model's own parameter objects (e.g. model.fc.weight) or their names"
                )
            name = by_id[id(item)]
        else:
            raise TypeError(f"params[{i}] must be a parameter name or tensor, got {type(item).__name__}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError("params must name at least one parameter")
    return {name: canonical[name] for name in chosen}


def probe_batch(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
    """A few examples to plan on, spread over x1 and x2 and distinct where possible (not the first rows)."""
    return _checks.spread_rows(x1, x2, _PROBE_EXAMPLES)


def make_problem(
    model: Any,
    x1: Any,
    x2: Any,
    outputs: Any,
    method: Any,
    params: Any,
    batch_size: Any,
    progress: Any,
    memory_budget: Any = None,
) -> tuple[Problem, torch.Tensor, torch.Tensor | None]:
    """Validate the arguments of `empirical_ntk`, probe the model, and describe the computation."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice(outputs, "outputs", OUTPUTS)
    check_choice(method, "method", METHODS)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    budget = DEFAULT_EMPIRICAL_BUDGET if memory_budget is None else memory_budget
    budget = int(check_real(budget, "memory_budget", minimum=0.0, strict=True))
    if budget < 1:
        raise ValueError(f"memory_budget must be at least 1 byte, got {memory_budget}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None, True or False, got {type(progress).__name__}")
    selected = _select_params(model, params)
    floating = {p.dtype for p in selected.values() if p.is_floating_point()}
    if len(floating) != 1:
        raise TypeError(
            "the parameters in params must share one floating dtype, got "
            f"{sorted(str(d) for d in {p.dtype for p in selected.values()})}"
        )
    dtype = floating.pop()
    device = next(iter(selected.values())).device
    x1, x2 = as_inputs(x1, x2, dtype, device)
    _checks.check_modes(model)
    k = _checks.probe(
        model, _checks.spread_rows(x1, x2, _checks.PROBE_BATCH), "x1" if x2 is None else "x1/x2", selected
    )

    problem = Problem(
        model=model,
        params={name: p.detach() for name, p in selected.items()},
        k=k,
        mode=outputs,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        progress=progress,
        budget=budget,
    )
    return problem, x1, x2
