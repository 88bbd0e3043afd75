"""The layerwise plan: how each parameter is represented, decided once on probe examples, and what it costs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._batching import OUT_OF_MEMORY
from ._hooks import LayerwiseUnsupported, _Call, _InPlace
from .rules import _Unhandled, structured
from .rules import uses as rule_uses


@dataclass
class _Group:
    """Parameters represented together: `kind` "factored", "onehot" or "dense"; `calls`: call indices."""

    kind: str
    keys: tuple[str, ...]
    calls: tuple[int, ...]


@dataclass
class _Plan:
    groups: list[_Group]
    residual: tuple[str, ...]  # parameters differentiated by whole-model per-example Jacobians
    fallback: set[int]  # ids of modules whose structured rule failed: they use the torch.func rule
    clone: set[int]  # ids of modules whose tensors the model edits in place after the call
    bytes_per_example: float = 0.0
    bytes_per_pair: float = 0.0
    pair_flops: float = 0.0
    example_flops: float = 0.0
    forward_flops: float = 0.0


class Planning:
    """The engine's planning job: decide every parameter's representation, check it against autograd, cost it."""

    def _uses(
        self,
        calls: list[_Call],
        b: int,
        leaves: dict[str, torch.Tensor],
        fallback: set[int],
        residual: set[str],
    ) -> list:
        """All uses of all calls as (call index, key, kind, *data), leaving out residual parameters."""
        out = []
        for index, call in enumerate(calls):
            module, keys = self.owners[id(call.module)]
            keys = {name: key for name, key in keys.items() if key not in residual}
            if not keys:
                continue
            is_structured = structured(module) and id(module) not in fallback
            with torch.no_grad():
                for use in rule_uses(call, keys, b, leaves, is_structured):
                    out.append((index, *use))
        return out

    def plan(self, x: torch.Tensor) -> _Plan:
        """Decide every parameter's representation from a few examples, and check it reproduces autograd."""
        clone: set[int] = set()
        for _ in range(3):  # no clone, clone what was edited, clone what that revealed
            try:
                return self._plan(x, clone)
            except _InPlace as err:
                clone |= err.modules
        raise LayerwiseUnsupported(
            "the model edits layer tensors in place in a way the layerwise method cannot follow"
        )

    def _plan(self, x: torch.Tensor, clone: set[int]) -> _Plan:
        problem = self.problem
        b, k = x.shape[0], problem.k
        generator = torch.Generator(device="cpu").manual_seed(1234)
        weights = torch.randn(b, k, generator=generator, dtype=torch.float64).to(
            problem.device, problem.dtype
        )
        calls, leaves, true_grads = self._record(x, _Plan([], (), set(), clone), weights, planning=True)
        # a structured rule that cannot take one call of a module sends every call of it to the torch.func
        # rule
        fallback: set[int] = set()
        for call in calls:
            module, keys = self.owners[id(call.module)]
            if structured(module) and id(module) not in fallback:
                try:
                    with torch.no_grad():
                        rule_uses(call, keys, b, leaves, True)
                except _Unhandled:
                    fallback.add(id(module))
        residual: set[str] = set()
        for call in calls:
            module, keys = self.owners[id(call.module)]
            if id(module) in fallback or not structured(module):
                try:
                    with torch.no_grad():
                        rule_uses(call, keys, b, leaves, False)
                except OUT_OF_MEMORY:
                    raise
                except Exception:
                    residual.update(keys.values())
        uses = self._uses(calls, b, leaves, fallback, residual)
        groups = self._group(uses)
        feats = self._assemble(uses, _Plan(groups, (), fallback, clone), b)
        reconstructed = self._weighted_sums(feats, groups, weights)
        # float32 sums over a few examples agree to ~1e-6 relative; a use of a parameter that the hooks missed
        # is O(1) off
        tol = 1e-3 if problem.itemsize <= 4 else 1e-8
        for key, truth in true_grads.items():
            if key in residual:
                continue
            rec = reconstructed.get(key)
            if rec is None and truth is None:
                continue
            if rec is None or truth is None:  # one side is zero: the other must be too
                if float((truth if rec is None else rec).abs().max()) > 0:
                    residual.add(key)
                continue
            rec = rec.reshape(truth.shape)
            if float(torch.dist(rec, truth)) > tol * (float(truth.norm()) + float(rec.norm())):
                residual.add(key)
        uses = [u for u in uses if u[1] not in residual]
        plan = _Plan(
            groups=self._group(uses),
            residual=tuple(key for key in problem.params if key in residual),
            fallback=fallback,
            clone=clone,
        )
        self._estimate(plan, uses)
        plan.forward_flops = _forward_flops(calls, b)
        return plan

    def _group(self, uses: list) -> list[_Group]:
        """Group parameters by representation; factor parameters with identical calls share a group."""
        problem = self.problem
        by_key: dict[str, list] = {}
        for use in uses:
            by_key.setdefault(use[1], []).append(use)
        groups: list[_Group] = []
        factored: dict[tuple[int, ...], list[str]] = {}
        for key, key_uses in by_key.items():
            kinds = {u[2] for u in key_uses}
            calls = tuple(u[0] for u in key_uses)
            if kinds == {"factor"} and len({u[3].shape[-1] for u in key_uses}) == 1:
                factored.setdefault(calls, []).append(key)
            elif kinds == {"onehot"}:
                groups.append(_Group("onehot", (key,), calls))
            else:
                groups.append(_Group("dense", (key,), calls))
        k, kp = problem.k, problem.k_pairs
        for calls, keys in factored.items():
            first = [u for u in uses if u[1] == keys[0]]
            positions = sum(u[3].shape[2] for u in first)
            dg = first[0][3].shape[-1]
            du = sum(u[4].shape[-1] for u in uses if u[1] in keys and u[0] == calls[0])
            # per pair of examples: two Gram matrices over positions and their product, against one inner
            # product of the materialised (k, dg * du) gradients
            g_factor = k * (k if problem.mode == "full" else 1)
            pair_factored = positions**2 * (du + g_factor * dg + kp)
            pair_dense = kp * dg * du
            kind = "factored" if pair_factored <= pair_dense else "dense"
            kind = self.representation or kind
            groups.append(_Group(kind, tuple(keys), calls))
        return groups

    def _estimate(self, plan: _Plan, uses: list) -> None:
        """Memory and flops of the plan per example and per pair of examples, for block sizes and "auto"."""
        problem = self.problem
        k, kp = problem.k, problem.k_pairs
        g_factor = k * (k if problem.mode == "full" else 1)
        by_key: dict[str, list] = {}
        for use in uses:
            by_key.setdefault(use[1], []).append(use)
        per_example, per_pair, pair_flops, example_flops = 0.0, float(kp), 0.0, 0.0
        for group in plan.groups:
            first = by_key[group.keys[0]]
            if group.kind == "dense":
                m = sum(problem.params[key].numel() for key in group.keys)
                per_example += k * m
                pair_flops += 2.0 * kp * m
                example_flops += 2.0 * k * m * sum(1 if u[2] == "dense" else u[3].shape[2] for u in first)
            else:
                positions = sum(u[3].shape[2] for u in first)
                dg = first[0][3].shape[-1]
                du = (
                    1
                    if group.kind == "onehot"
                    else sum(u[4].shape[-1] for u in uses if u[1] in group.keys and u[0] == group.calls[0])
                )
                per_example += positions * (du + k * dg)
                # the Gram temporaries of one group live at a time
                per_pair = max(per_pair, positions**2 * (2.0 + g_factor))
                pair_flops += 2.0 * positions**2 * (du + g_factor * dg + kp)
        m_res = sum(problem.params[key].numel() for key in plan.residual)
        per_example += 2.0 * k * m_res  # the residual Jacobians and their transients
        pair_flops += 2.0 * kp * m_res
        # features, plus the forward graph and cotangents that produced them
        plan.bytes_per_example = 2.0 * per_example * problem.itemsize
        plan.bytes_per_pair = per_pair * problem.itemsize
        plan.pair_flops = pair_flops
        plan.example_flops = example_flops


def _forward_flops(calls: list[_Call], b: int) -> float:
    """Rough flops of one forward pass per example, from the recorded calls of the parametrised modules.

    A module with a weight matrix or kernel costs 2 * (output elements) * (fan-in); any other one 2 *
    max(output elements, parameters). Parameter-free work (activations, pooling, attention products) is not
    counted.
    """
    flops = 0.0
    for call in calls:
        out = sum(t.numel() for t in call.targets) / b
        weight = call.module._parameters.get("weight")
        if weight is not None and weight.ndim >= 2 and not isinstance(call.module, nn.Embedding):
            flops += 2.0 * out * (weight.numel() / weight.shape[0])
        else:
            owned = sum(p.numel() for p in call.module._parameters.values() if p is not None)
            flops += 2.0 * max(out, owned)
    return flops


def plan_cost(plan: _Plan, problem, forward: float, examples: float, pairs: float) -> float:
    """Estimated flops of the layerwise method with `plan`: (1 + k) forward passes per example, the plan's Gram
    products per pair and materialisations per example, and the per-example costs of fallback or residual
    parameters (3 F k each)."""
    k = problem.k
    extra = 3.0 * forward * k if (plan.fallback or plan.residual) else 0.0
    return (1.0 + k) * forward * examples + plan.pair_flops * pairs + (plan.example_flops + extra) * examples
