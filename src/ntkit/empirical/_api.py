"""The public entry point `empirical_ntk`: validation at the boundary, then dispatch to a method."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_choice, check_int, check_real
from . import _checks
from ._batching import DEFAULT_EMPIRICAL_BUDGET
from ._problem import Problem

OUTPUTS = ("mean", "diagonal", "full")
METHODS = ("auto", "jacobian", "ntk-vp", "layerwise")

_PROBE_EXAMPLES = 3  # enough to plan the layerwise method on; small enough to cost a few forward passes


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


def _probe_batch(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
    """A few examples to plan on, spread over x1 and x2 and distinct where possible (not the first rows)."""
    return _checks.spread_rows(x1, x2, _PROBE_EXAMPLES)


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor | np.ndarray,
    x2: torch.Tensor | np.ndarray | None = None,
    *,
    outputs: str = "mean",
    method: str = "auto",
    params: Iterable[str | torch.Tensor] | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """The empirical (finite-width) neural tangent kernel of `model` between the examples of x1 and x2.

    T_ab(x, x') = <df_a(x)/dtheta, df_b(x')/dtheta>, summed over the parameters theta (Jacot et al. 2018), for
    every pair of an example x of x1 and x' of x2 and every pair of outputs (a, b) of the model.

    Args:
        model: any `torch.nn.Module` mapping a batch (n, ...) to outputs (n, ...) (flattened to k per
            example), with examples independent of each other: BatchNorm and dropout must be in eval mode.
        x1: inputs (n1, ...), a tensor or numpy array; floating inputs are cast to the model's dtype, integer
            inputs (token ids) are passed as they are.
        x2: inputs (n2, ...) with the same trailing shape; None means x1, and then only blocks on and above
            the diagonal are computed (the kernel is symmetric).
        outputs: "mean" -> (n1, n2), the mean over a of T_aa (what the infinite-width NTK predicts, T * I_k);
            "diagonal" -> (n1, n2, k), T_aa; "full" -> (n1, n2, k, k), every T_ab.
        method: "jacobian" (per-example Jacobians, contracted), "ntk-vp" (NTK-vector products from vjp and
            jvp), "layerwise" (per-layer Gram products from forward and backward hooks, exact fallback for
            unknown layers), or "auto", which picks the cheapest of them for this model (Novak et al. 2022,
            "Fast finite width neural tangent kernel"). All are exact.
        params: the parameters to differentiate, as names (as in `model.named_parameters()`) or the parameter
            tensors themselves; None means every parameter with requires_grad=True (frozen ones contribute
            nothing).
        batch_size: examples per block; None chooses it from `memory_budget`.
        memory_budget: bytes of working memory (per-example Jacobians or layer features, their transients and
            the contraction temporaries) that the block sizes are planned for, beside the output; None means
            `ntkit.empirical.DEFAULT_EMPIRICAL_BUDGET` (1 GiB). It sets the block size (unless batch_size is
            given) and whether column features are cached; the output itself must fit in the device's free
            memory. Lower it after an out-of-memory error.
        progress: show a progress bar: True always, False never, None (the default) only once the run has
            lasted 2 seconds, wherever it runs (terminal, notebook or log). This differs from
            `Serial.kernel`'s progress=None, which shows a bar on terminals only.

    Returns:
        A tensor in the model's dtype on the model's device, of shape (n1, n2), (n1, n2, k) or (n1, n2, k, k).

    Raises:
        TypeError, ValueError: an argument of the wrong type or value (the message names it), inputs with NaN
            or inf, inputs the model rejects, parameters that are not the model's; and models without a
            per-example NTK: BatchNorm or dropout in training mode (call model.eval()), outputs or gradients
            for one example that depend on the other examples of the batch, or random outputs (what the probe
            detects, and what it cannot, is listed in `ntkit.empirical._checks`); inputs without features; a
            kernel that overflows the dtype (inf or NaN entries).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        >>> empirical_ntk(net, torch.randn(10, 3)).shape
        torch.Size([10, 10])
    """
    problem, x1, x2 = make_problem(
        model, x1, x2, outputs, method, params, batch_size, progress, memory_budget
    )
    plan = None
    if method == "auto":
        from .layerwise import choose_method

        method, plan = choose_method(problem, x1, x2)
    if method == "jacobian":
        from .jacobian import jacobian_ntk

        return jacobian_ntk(problem, x1, x2)
    if method == "ntk-vp":
        from .ntk_vp import ntk_vp_ntk

        return ntk_vp_ntk(problem, x1, x2)
    from .layerwise import LayerwiseUnsupported, layerwise_ntk

    if plan is None:
        return layerwise_ntk(problem, x1, x2)
    try:
        return layerwise_ntk(problem, x1, x2, plan=plan)
    except LayerwiseUnsupported:  # "auto" never fails where an exact method works
        from .jacobian import jacobian_ntk

        return jacobian_ntk(problem, x1, x2)


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
    x1 = _as_input(x1, "x1", dtype, device)
    if x2 is not None:
        x2 = _as_input(x2, "x2", dtype, device)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(
                f"x1 and x2 must have the same shape after the example axis, got x1.shape={tuple(x1.shape)} "
                f"and x2.shape={tuple(x2.shape)}"
            )
        if x2.is_floating_point() != x1.is_floating_point():
            raise TypeError(f"x1 and x2 must both be floating or both integer, got {x1.dtype} and {x2.dtype}")
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
