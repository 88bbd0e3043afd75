"""The public entry point `empirical_ntk`: validation at the boundary, then dispatch to a method."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ._problem import METHODS, OUTPUTS, make_problem

__all__ = ["METHODS", "OUTPUTS", "empirical_ntk"]


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
            `ntkit.tiling.DEFAULT_MEMORY_BUDGET` (1 GiB, the default of every kernel in ntkit). It sets the
            block size (unless batch_size is given) and whether column features are cached; the output itself
            must fit in the device's free memory. Lower it after an out-of-memory error.
        progress: show a progress bar: True always, False never, None (the default) once the run has lasted
            2 seconds, on a terminal or in a notebook: the rule of every kernel in ntkit.

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
        from .policy import choose_method

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
