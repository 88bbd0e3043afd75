"""The empirical NTK's method choice: each exact method reports its estimated cost; the cheapest is run."""

from __future__ import annotations

import torch

from . import jacobian, ntk_vp
from ._batching import OUT_OF_MEMORY
from ._problem import Problem, probe_batch
from .layerwise import Layerwise, LayerwiseUnsupported
from .layerwise._plan import _Plan, plan_cost


def choose_method(problem: Problem, x1: torch.Tensor, x2: torch.Tensor | None) -> tuple[str, _Plan | None]:
    """The exact method with the lowest estimated flop count, and the layerwise plan when it is that one.

    Estimates, with F the forward flops per example, P the parameter count, k outputs, kp output pairs formed
    (k, or k**2 for outputs="full"), n examples and p pairs (n1 n2, or n (n + 1) / 2 for x2=None):
      jacobian:  3 F k n + 2 P kp p;
      ntk-vp:    3 F k n + 3 F k p (a jvp per tangent per example);
      layerwise: (1 + k) F n + the plan's Gram products per pair and materialisations per example, and the
                 per-example costs of any fallback or residual parameters.
    Layerwise is left out only for a model its plan cannot follow (LayerwiseUnsupported, or an operation that
    fails under its hooks: RuntimeError, NotImplementedError); out-of-memory and other errors propagate.
    """
    probe_x = probe_batch(x1, x2)
    plan = None
    try:
        plan = Layerwise(problem).plan(probe_x)
    except OUT_OF_MEMORY:  # not a property of the model: switching method would only hide it
        raise
    except (LayerwiseUnsupported, RuntimeError, NotImplementedError):  # a model the hooks cannot follow
        plan = None
    forward = max(2.0 * problem.n_params, 0.0 if plan is None else plan.forward_flops)
    n1 = x1.shape[0]
    if x2 is None:
        examples, pairs = float(n1), n1 * (n1 + 1) / 2.0
    else:
        examples, pairs = float(n1 + x2.shape[0]), float(n1) * x2.shape[0]
    costs = {
        "jacobian": jacobian.cost(problem, forward, examples, pairs),
        "ntk-vp": ntk_vp.cost(problem, forward, examples, pairs),
    }
    if plan is not None:
        costs["layerwise"] = plan_cost(plan, problem, forward, examples, pairs)
    method = min(costs, key=costs.get)
    if method == "ntk-vp":
        if not ntk_vp.supports_forward_ad(problem.model, problem.params, probe_x[:1]):
            del costs["ntk-vp"]
            method = min(costs, key=costs.get)
    return method, (plan if method == "layerwise" else None)
