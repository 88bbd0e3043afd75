"""Recording a block: forward hooks on the modules that own selected parameters, then their output cotangents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils import _pytree as pytree

from .._batching import OUT_OF_MEMORY

if TYPE_CHECKING:
    from ._plan import _Plan


class LayerwiseUnsupported(RuntimeError):
    """The model does something per block that the layerwise plan cannot follow; method="jacobian" can."""


@dataclass
class _Call:
    """One call of a module with selected parameters: its inputs, its output, and the output's cotangents."""

    module: nn.Module
    args: tuple
    kwargs: dict
    output: Any
    targets: list[torch.Tensor]  # the output's tensors that depend on the parameters
    out_mask: list[bool]  # which leaves of the output (as a pytree) are targets
    # version counters of the targets and tensor arguments when recorded, to detect later in-place edits
    versions: list[int]
    grads: list[torch.Tensor] = field(default_factory=list)  # per target: (b, k, *shape[1:])


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _versions(call_args: tuple, kwargs: dict, targets: list[torch.Tensor]) -> list[int]:
    tensors = [t for t in pytree.tree_leaves((call_args, kwargs)) if isinstance(t, torch.Tensor)]
    return [t._version for t in (*targets, *tensors)]


class _Recorder:
    """Forward hooks that record the calls of the modules owning selected parameters."""

    def __init__(self, modules: list[nn.Module], clone: set[int]):
        self.calls: list[_Call] = []
        self.active = False
        self.handles = []
        for module in modules:
            if id(module) in clone:
                # the model edits this module's tensors in place later (ReLU(inplace=True)): record copies
                self.handles.append(module.register_forward_pre_hook(self._clone_args, with_kwargs=True))
            self.handles.append(
                module.register_forward_hook(self._make_hook(id(module) in clone), with_kwargs=True)
            )

    def _clone_args(self, module, args, kwargs):
        if not self.active:
            return None

        def copy(t: Any) -> Any:
            return t.clone() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        return pytree.tree_map(copy, args), pytree.tree_map(copy, kwargs)

    def _make_hook(self, clone_output: bool) -> Callable:
        def hook(module, args, kwargs, output):
            if not self.active:
                return None
            mask = [isinstance(t, torch.Tensor) and t.requires_grad for t in pytree.tree_leaves(output)]
            targets = [t for t, keep in zip(pytree.tree_leaves(output), mask, strict=True) if keep]
            if not targets:
                return None  # no selected parameter acted in this call (e.g. inside torch.no_grad)
            versions = _versions(args, kwargs, targets)
            self.calls.append(_Call(module, args, kwargs, output, targets, mask, versions))
            if clone_output:
                return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, output)
            return None

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class _InPlace(Exception):
    def __init__(self, modules: set[int]):
        super().__init__("in-place edit")
        self.modules = modules


class Recording:
    """The engine's recording job: one forward pass with hooks and the cotangents of every recorded output."""

    def _record(
        self, x: torch.Tensor, plan: _Plan, check_weights: torch.Tensor | None, planning: bool = False
    ) -> tuple[list[_Call], dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Forward the block with hooks, then the cotangents of every recorded output, for each output."""
        b, k = x.shape[0], self.problem.k
        # every owner is hooked and every parameter is a leaf, also residual ones, so that call indices match
        # the probe's in every block
        leaves = {key: p.detach().requires_grad_(True) for key, p in self.problem.params.items()}
        modules = [m for m, _ in self.owners.values()]
        recorder = _Recorder(modules, plan.clone)
        recorder.active = True
        try:
            with torch.enable_grad():
                out = functional_call(self.model, leaves, (x,)).reshape(b, k)
                self.last_outputs = out.detach()  # for the batch-mixing check of the first large block
        finally:
            recorder.active = False
            recorder.close()
        calls = recorder.calls
        edited = {id(c.module) for c in calls if _versions(c.args, c.kwargs, c.targets) != c.versions}
        if edited:
            if planning:
                raise _InPlace(edited)
            raise LayerwiseUnsupported(
                "the model edits layer inputs or outputs in place in a way the layerwise method cannot "
                "follow; use method='jacobian'"
            )
        targets = [t for c in calls for t in c.targets]
        true_grads = None
        if not out.requires_grad:  # no selected parameter reaches the output: every gradient is zero
            targets = []
        if targets:
            with torch.enable_grad():
                if k == 1:
                    grads = torch.autograd.grad(
                        out.sum(), targets, retain_graph=check_weights is not None, allow_unused=True
                    )
                    grads = [None if g is None else g.unsqueeze(1) for g in grads]
                else:
                    basis = torch.eye(k, dtype=out.dtype, device=out.device).unsqueeze(1).expand(k, b, k)
                    try:
                        grads = torch.autograd.grad(
                            out, targets, basis, retain_graph=True, allow_unused=True, is_grads_batched=True
                        )
                    except OUT_OF_MEMORY:  # a RuntimeError, but a loop would only hide it
                        raise
                    except RuntimeError:  # an operation without a batching rule: one backward pass per output
                        per_output = [
                            torch.autograd.grad(
                                out[:, a].sum(), targets, retain_graph=True, allow_unused=True
                            )
                            for a in range(k)
                        ]
                        grads = [
                            None if col[0] is None else torch.stack(col)
                            for col in zip(*per_output, strict=True)
                        ]
                    grads = [None if g is None else g.movedim(0, 1) for g in grads]
                if check_weights is not None:
                    wanted = [key for key in leaves if leaves[key].requires_grad]
                    weighted = torch.autograd.grad(
                        (out * check_weights).sum(), [leaves[key] for key in wanted], allow_unused=True
                    )
                    true_grads = {key: g for key, g in zip(wanted, weighted, strict=True)}
            it = iter(grads)
            for c in calls:
                # the rules need values only; detaching lets the forward graph go as soon as `out` does
                c.args, c.kwargs = pytree.tree_map(_detach, (c.args, c.kwargs))
                c.output = pytree.tree_map(_detach, c.output)
                c.targets = [t.detach() for t in c.targets]
                c.grads = [
                    torch.zeros(b, k, *t.shape[1:], dtype=t.dtype, device=t.device) if g is None else g
                    for t, g in zip(c.targets, (next(it) for _ in c.targets), strict=True)
                ]
        else:
            for c in calls:
                c.args, c.kwargs = pytree.tree_map(_detach, (c.args, c.kwargs))
                c.output = pytree.tree_map(_detach, c.output)
                c.targets = [t.detach() for t in c.targets]
                c.grads = [torch.zeros(b, k, *t.shape[1:], dtype=t.dtype, device=t.device) for t in c.targets]
            if check_weights is not None:
                true_grads = {key: None for key in leaves}
        return calls, leaves, true_grads
