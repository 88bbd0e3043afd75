"""Empirical NTK layer by layer: Gram products of layer inputs and output cotangents, captured by hooks.

For a linear map y = W a + b applied at positions s (sequence positions, spatial positions, repeated calls),
the per-example gradient is dL/dW = sum_s g_s a_s^T with g = dL/dy, so the NTK contribution of (W, b) is

    T_ab(x, x') = sum_{s, t} (a_s . a'_t + 1) (g_{a, s} . g'_{b, t})

(Jacot et al. 2018; the "structured derivatives" of Novak et al. 2022, "Fast finite width neural tangent
kernel"): two Gram matrices of width-sized vectors instead of contracting width x width Jacobians. One
forward pass records every layer's input (forward hooks) and one backward pass per output records the
cotangent of every layer's output, for a whole block of examples at once (examples are independent, so the
gradient of the batch sum with respect to a layer output is the per-example cotangent).

Layers handled this way: Linear (any leading dimensions), ntkit's NTKLinear (scaled Linear, contribution
weight_scale**2 (a.a')(g.g') + bias_scale**2 (g.g')), Conv1d/Conv2d (unfolded patches are the positions),
Embedding (the one-hot inputs' Gram matrix is token equality). LayerNorm, GroupNorm and eval-mode BatchNorm
affine parameters get their small per-example gradients directly (g * normalised input). Any other module with
parameters gets exact per-example gradients of its own parameters from torch.func (vmap of a vjp of that
module alone, on its recorded inputs and output cotangents). A parameter used by several layers (tied weights,
a module called twice) sums the uses before the inner product, so cross terms between uses count. Per layer,
a cost model picks the Gram form or the materialised per-example gradient (cheaper for small layers or many
positions, e.g. convolutions); both are exact.

Every parameter is checked on a few examples first: the per-example gradients reconstructed from the captured
pieces, weighted by random numbers and summed, must match autograd's gradient of the same weighted sum. A
parameter that fails (used outside its module's forward, a layer whose batch axis is not the first) is
differentiated as a whole by per-example Jacobians instead, so the result stays exact.

The package by job: `_hooks` records a block (forward hooks, cotangents), `rules` turns calls of known module
types into parameter uses (a registry: `register_rule(module_type)` adds one), `_plan` decides and costs each
parameter's representation on probe examples, `_contraction` assembles a block's features and contracts two
blocks. The method choice between this and the other methods lives in `ntkit.empirical.policy`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .. import _checks
from .._batching import block_size, run_blocks
from .._problem import Problem, make_problem, probe_batch
from ..jacobian import per_example_jacobians
from ._contraction import Contraction
from ._hooks import LayerwiseUnsupported, Recording
from ._plan import Planning, _Plan
from .rules import _Unhandled, register_rule, structured

__all__ = ["Layerwise", "LayerwiseUnsupported", "explain", "layerwise_ntk", "register_rule"]


class Layerwise(Recording, Planning, Contraction):
    """The layerwise computation for one problem: module bookkeeping here; recording (`_hooks`), the plan
    (`_plan`) and the contraction (`_contraction`) in their own modules."""

    def __init__(self, problem: Problem, representation: str | None = None):
        self.problem = problem
        self.representation = representation
        self.model = problem.model
        selected = {
            id(p): key for key, p in dict(problem.model.named_parameters()).items() if key in problem.params
        }
        # module -> {local parameter name: canonical key} for the modules owning selected parameters
        self.owners: dict[int, tuple[nn.Module, dict[str, str]]] = {}
        for module in problem.model.modules():
            keys = {
                name: selected[id(p)]
                for name, p in module._parameters.items()
                if p is not None and id(p) in selected
            }
            if keys:
                self.owners[id(module)] = (module, keys)

    def features(self, x: torch.Tensor, plan: _Plan) -> dict[str, Any]:
        b = x.shape[0]
        calls, leaves, _ = self._record(x, plan, None)
        try:
            uses = self._uses(calls, b, leaves, plan.fallback, set(plan.residual))
        except _Unhandled as err:
            raise LayerwiseUnsupported(
                "a layer was called differently in this block than on the probe examples (its batch axis is "
                "not the examples'); use method='jacobian'"
            ) from err
        feats = self._assemble(uses, plan, b)
        del calls
        if plan.residual:
            params = {key: self.problem.params[key] for key in plan.residual}
            feats["dense"].append(per_example_jacobians(self.model, params, x))
        feats["dense"] = torch.cat(feats["dense"], dim=2) if feats["dense"] else None
        return feats


def layerwise_ntk(
    problem: Problem,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    plan: _Plan | None = None,
    representation: str | None = None,
) -> torch.Tensor:
    """Empirical NTK of `problem` by per-layer Gram products (see the module docstring).

    `representation` "factored" or "dense" overrides the cost model's choice for every layer (both are exact;
    the tests use it to exercise both contractions)."""
    engine = Layerwise(problem, representation)
    if plan is None:
        plan = engine.plan(probe_batch(x1, x2))
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    batch = problem.batch_size or block_size(
        max(n1, n2), plan.bytes_per_example, plan.bytes_per_pair, budget=problem.budget
    )
    # the cached features are half of bytes_per_example (the rest is transients), given half the budget
    cache = n2 * plan.bytes_per_example <= problem.budget
    checked = _checks.PROBE_BATCH  # the largest batch seen not to mix

    def features(x: torch.Tensor) -> dict[str, Any]:
        nonlocal checked
        feats = engine.features(x, plan)
        if x.shape[0] > checked:  # a model may mix only in batches larger than the probe's
            _checks.check_outputs(problem.model, x, engine.last_outputs, "x1" if x2 is None else "x1/x2")
            checked = x.shape[0]
        return feats

    return run_blocks(
        x1,
        x2,
        row_features=features,
        col_features=features,
        contract=engine.contract,
        tail=problem.tail,
        dtype=problem.dtype,
        device=problem.device,
        batch=batch,
        cache_columns=cache,
        shared_features=True,
        progress=problem.progress,
        description="empirical NTK (layerwise)",
    )


def explain(
    model: nn.Module,
    x: torch.Tensor,
    *,
    outputs: str = "mean",
    params: Iterable[str | torch.Tensor] | None = None,
) -> dict[str, str]:
    """How the layerwise method treats each parameter on inputs like x.

    Returns parameter name -> "factored" (Gram products), "onehot" (embedding Gram by token equality),
    "dense" (per-example gradients from a structured rule), "module-vjp" (per-example gradients of an unknown
    module by torch.func), "jacobian" (whole-model per-example Jacobians: a use the hooks could not follow) or
    "unused" (the output does not depend on it on these inputs).
    """
    problem, x, _ = make_problem(model, x, None, outputs, "layerwise", params, None, False)
    engine = Layerwise(problem)
    plan = engine.plan(probe_batch(x, None))
    structured_keys = {
        key
        for module, keys in engine.owners.values()
        if structured(module) and id(module) not in plan.fallback
        for key in keys.values()
    }
    out = {}
    for group in plan.groups:
        for key in group.keys:
            out[key] = group.kind if group.kind != "dense" or key in structured_keys else "module-vjp"
    for key in plan.residual:
        out[key] = "jacobian"
    for key in problem.params:
        out.setdefault(key, "unused")
    return out
