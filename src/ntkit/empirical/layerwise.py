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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils import _pytree as pytree

from ..layers.dense import NTKLinear
from . import _checks, _contract
from ._api import _probe_batch, make_problem
from ._batching import OUT_OF_MEMORY, block_size, run_blocks
from ._problem import Problem
from .jacobian import per_example_jacobians

_FORCE_REPRESENTATION: str | None = None  # tests set "factored" or "dense" to exercise both contractions


class LayerwiseUnsupported(RuntimeError):
    """The model does something per block that the layerwise plan cannot follow; method="jacobian" can."""


class _Unhandled(Exception):
    """A module call the structured rules cannot take; its parameters fall back to per-example gradients."""


# ------------------------------------------------------------------------------------------------------------
# recording calls


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


# ------------------------------------------------------------------------------------------------------------
# structured rules: each turns a call into "uses" of parameters
#   ("factor", g (b, k, S, dg), u (b, S, du)):  per-example gradient sum_s g[:, a, s] (outer) u[:, s], the
#                                              parameter viewed as a (dg, du) matrix;
#   ("onehot", g (b, k, S, d), idx (b, S)):    per-example gradient sum_s e_{idx_s} (outer) g[:, a, s];
#   ("dense", j (b, k, M)):                    per-example gradient, flattened.


def _first_arg(call: _Call, name: str) -> torch.Tensor:
    x = call.args[0] if call.args else call.kwargs.get(name)
    if not isinstance(x, torch.Tensor):
        raise _Unhandled
    return x


def _cotangent(call: _Call) -> torch.Tensor:
    if not isinstance(call.output, torch.Tensor) or call.out_mask != [True]:
        raise _Unhandled
    return call.grads[0]


def _linear_uses(call: _Call, keys: dict[str, str], b: int, w_scale: float, b_scale: float) -> list:
    x = _first_arg(call, "input")
    g = _cotangent(call)
    if x.ndim < 2 or x.shape[0] != b:
        raise _Unhandled
    k = g.shape[1]
    g = g.reshape(b, k, -1, g.shape[-1])
    u = x.reshape(b, -1, x.shape[-1])
    uses = []
    if "weight" in keys:
        uses.append((keys["weight"], "factor", g, u if w_scale == 1.0 else u * w_scale))
    if "bias" in keys:
        uses.append((keys["bias"], "factor", g, torch.full_like(u[..., :1], b_scale)))
    return uses


def _same_padding(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[int]:
    """F.pad amounts (last dimension first) for padding="same": the odd extra element goes on the right."""
    pads: list[int] = []
    for size, dil in reversed(list(zip(kernel, dilation, strict=True))):
        total = dil * (size - 1)
        pads += [total // 2, total - total // 2]
    return pads


def _conv_uses(call: _Call, keys: dict[str, str], b: int, dims: int) -> list:
    conv = call.module
    x = _first_arg(call, "input")
    g = _cotangent(call)
    if x.ndim != dims + 2 or x.shape[0] != b or conv.padding_mode != "zeros":
        raise _Unhandled
    kernel, dilation, stride = tuple(conv.kernel_size), tuple(conv.dilation), tuple(conv.stride)
    if isinstance(conv.padding, str):
        pads = _same_padding(kernel, dilation) if conv.padding == "same" else [0] * (2 * dims)
    else:
        pads = [p for p in reversed(conv.padding) for _ in range(2)]
    if any(pads):
        x = F.pad(x, pads)
    if dims == 1:  # a 1-D convolution is a 2-D one over a height-1 image
        x, kernel, dilation, stride = x.unsqueeze(2), (1, *kernel), (1, *dilation), (1, *stride)
    # (b, L, C_in * prod(kernel)), channels slowest as in weight.reshape(C_out, -1)
    patches = F.unfold(x, kernel, dilation=dilation, stride=stride).transpose(1, 2)
    k = g.shape[1]
    c_out = g.shape[2]
    g = g.reshape(b, k, c_out, -1).transpose(2, 3)  # (b, k, L, C_out)
    if patches.shape[1] != g.shape[2]:
        raise _Unhandled
    uses = []
    if "weight" in keys:
        groups = conv.groups
        if groups == 1:
            uses.append((keys["weight"], "factor", g, patches))
        else:
            positions = patches.shape[1]
            p = patches.reshape(b, positions, groups, -1)
            gg = g.reshape(b, k, positions, groups, c_out // groups)
            jac = torch.einsum("bklgo,blgi->bkgoi", gg, p).reshape(b, k, -1)
            uses.append((keys["weight"], "dense", jac))
    if "bias" in keys:
        uses.append((keys["bias"], "factor", g, torch.ones_like(patches[..., :1])))
    return uses


def _embedding_uses(call: _Call, keys: dict[str, str], b: int) -> list:
    emb = call.module
    idx = _first_arg(call, "input")
    g = _cotangent(call)
    if idx.ndim < 1 or idx.shape[0] != b or emb.max_norm is not None or emb.scale_grad_by_freq:
        raise _Unhandled
    k = g.shape[1]
    idx = idx.reshape(b, -1)
    g = g.reshape(b, k, idx.shape[1], g.shape[-1])
    if emb.padding_idx is not None:
        g = g * (idx != emb.padding_idx).to(g.dtype)[:, None, :, None]
    return [(keys["weight"], "onehot", g, idx)] if "weight" in keys else []


def _affine_uses(
    call: _Call, keys: dict[str, str], b: int, normalised: torch.Tensor, channel_last: int
) -> list:
    """Per-example gradients of elementwise affine parameters: sum over positions of g * x_hat and of g."""
    g = _cotangent(call)
    k = g.shape[1]
    if channel_last:  # LayerNorm: the parameters cover the trailing `channel_last` elements
        gg = g.reshape(b, k, -1, channel_last)
        xh = normalised.reshape(b, 1, -1, channel_last)
        reduce = 2
    else:  # GroupNorm, BatchNorm: one parameter per channel, axis 1 of the input
        c = g.shape[2]
        gg = g.reshape(b, k, c, -1)
        xh = normalised.reshape(b, 1, c, -1)
        reduce = 3
    uses = []
    if "weight" in keys:
        uses.append((keys["weight"], "dense", (gg * xh).sum(reduce)))
    if "bias" in keys:
        uses.append((keys["bias"], "dense", gg.sum(reduce)))
    return uses


def _norm_uses(call: _Call, keys: dict[str, str], b: int) -> list:
    module = call.module
    x = _first_arg(call, "input")
    if x.ndim < 2 or x.shape[0] != b:
        raise _Unhandled
    if isinstance(module, nn.LayerNorm):
        shape = tuple(module.normalized_shape)
        if x.ndim <= len(shape):
            raise _Unhandled
        xh = F.layer_norm(x, shape, None, None, module.eps)
        return _affine_uses(call, keys, b, xh, math.prod(shape))
    if isinstance(module, nn.GroupNorm):
        xh = F.group_norm(x, module.num_groups, None, None, module.eps)
        return _affine_uses(call, keys, b, xh, 0)
    # BatchNorm in eval mode: a fixed per-channel affine map of the input (check_modes refused training mode)
    if module.training or module.running_mean is None:
        raise _Unhandled
    xh = F.batch_norm(x, module.running_mean, module.running_var, None, None, False, 0.0, module.eps)
    return _affine_uses(call, keys, b, xh, 0)


def _fallback_uses(call: _Call, keys: dict[str, str], b: int, params: dict[str, torch.Tensor]) -> list:
    """Exact per-example gradients of this module's own parameters by torch.func, from the recorded call."""
    module = call.module
    leaves, spec = pytree.tree_flatten((call.args, call.kwargs))
    batched = [isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == b for t in leaves]
    out_mask = call.out_mask
    if any(t.ndim == 0 or t.shape[0] != b for t in call.targets):
        raise _Unhandled
    local = {name: params[key] for name, key in keys.items()}
    batched_inputs = [t.detach() for t, is_b in zip(leaves, batched, strict=True) if is_b]
    cotangents = tuple(call.grads)

    def outputs(p: dict[str, torch.Tensor], xs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        it = iter(xs)
        rebuilt = [next(it).unsqueeze(0) if is_b else t for t, is_b in zip(leaves, batched, strict=True)]
        args, kwargs = pytree.tree_unflatten(rebuilt, spec)
        out = pytree.tree_leaves(functional_call(module, p, args, kwargs))
        return tuple(t.squeeze(0) for t, keep in zip(out, out_mask, strict=True) if keep)

    def per_example(xs: list[torch.Tensor], cts: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        _, pullback = vjp(lambda p: outputs(p, xs), local)
        return vmap(pullback)(cts)[0]  # over the k outputs

    grads = vmap(per_example, in_dims=(0, 0))(batched_inputs, cotangents)
    return [(key, "dense", grads[name].reshape(b, grads[name].shape[1], -1)) for name, key in keys.items()]


_RULES_1D = (nn.Conv1d,)
_RULES_2D = (nn.Conv2d,)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _structured(module: nn.Module) -> bool:
    """Whether a module type has an exact structured rule (exact types: subclasses may change forward)."""
    kind = type(module)
    return kind in (nn.Linear, nn.Embedding, *_RULES_1D, *_RULES_2D, *_NORMS) or kind is NTKLinear


def _uses(
    call: _Call, keys: dict[str, str], b: int, params: dict[str, torch.Tensor], structured: bool
) -> list:
    module = call.module
    kind = type(module)
    if structured:
        if kind is nn.Linear:
            return _linear_uses(call, keys, b, 1.0, 1.0)
        if kind is NTKLinear:
            return _linear_uses(call, keys, b, float(module.weight_scale), float(module.bias_scale))
        if kind in _RULES_1D:
            return _conv_uses(call, keys, b, 1)
        if kind in _RULES_2D:
            return _conv_uses(call, keys, b, 2)
        if kind is nn.Embedding:
            return _embedding_uses(call, keys, b)
        if kind in _NORMS:
            return _norm_uses(call, keys, b)
    return _fallback_uses(call, keys, b, params)


# ------------------------------------------------------------------------------------------------------------
# the plan: how each parameter is represented, decided once on the probe examples


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


class _Layerwise:
    """The layerwise computation for one problem: module bookkeeping, the plan, features and contractions."""

    def __init__(self, problem: Problem):
        self.problem = problem
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

    # --- one block: record, differentiate, split into uses -------------------------------------------------
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
            structured = _structured(module) and id(module) not in fallback
            with torch.no_grad():
                for use in _uses(call, keys, b, leaves, structured):
                    out.append((index, *use))
        return out

    # --- planning on the probe examples --------------------------------------------------------------------
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
            if _structured(module) and id(module) not in fallback:
                try:
                    with torch.no_grad():
                        _uses(call, keys, b, leaves, True)
                except _Unhandled:
                    fallback.add(id(module))
        residual: set[str] = set()
        for call in calls:
            module, keys = self.owners[id(call.module)]
            if id(module) in fallback or not _structured(module):
                try:
                    with torch.no_grad():
                        _uses(call, keys, b, leaves, False)
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
            kind = _FORCE_REPRESENTATION or kind
            groups.append(_Group(kind, tuple(keys), calls))
        return groups

    # --- features of a block -------------------------------------------------------------------------------
    def _assemble(self, uses: list, plan: _Plan, b: int) -> dict[str, Any]:
        """Gather the uses of a block into the plan's representation."""
        by_key: dict[str, list] = {}
        for use in uses:
            by_key.setdefault(use[1], []).append(use)
        factors, onehots, dense = [], [], []
        for group in plan.groups:
            for key in group.keys:
                if tuple(u[0] for u in by_key.get(key, [])) != group.calls:
                    raise LayerwiseUnsupported(
                        f"parameter {key!r} was used differently in this block than on the probe examples "
                        "(does the forward pass branch on the data?); use method='jacobian'"
                    )
            if group.kind == "factored":
                g_parts, u_parts = [], []
                # the keys of a group share their calls, so the g factor of a call is the same for all of them
                for position in range(len(group.calls)):
                    g_parts.append(by_key[group.keys[0]][position][3])
                    u_parts.append(torch.cat([by_key[key][position][4] for key in group.keys], dim=-1))
                factors.append((torch.cat(g_parts, dim=2), torch.cat(u_parts, dim=1)))
            elif group.kind == "onehot":
                key_uses = by_key[group.keys[0]]
                onehots.append(
                    (torch.cat([u[3] for u in key_uses], dim=2), torch.cat([u[4] for u in key_uses], dim=1))
                )
            else:
                for key in group.keys:
                    dense.append(self._materialise(by_key[key], self.problem.params[key]))
        return {"factors": factors, "onehots": onehots, "dense": dense, "n": b}

    def _materialise(self, key_uses: list, param: torch.Tensor) -> torch.Tensor:
        """Per-example gradient (b, k, M) of one parameter: the sum of its uses."""
        total = None
        for use in key_uses:
            kind = use[2]
            if kind == "dense":
                part = use[3]
            elif kind == "factor":
                g, u = use[3], use[4]
                part = torch.einsum("bksg,bsu->bkgu", g, u).reshape(g.shape[0], g.shape[1], -1)
            else:
                g, idx = use[3], use[4]
                b, k, s, d = g.shape
                rows = param.shape[0]
                buf = torch.zeros(b, rows, k * d, dtype=g.dtype, device=g.device)
                buf.scatter_add_(
                    1, idx.unsqueeze(-1).expand(b, s, k * d), g.permute(0, 2, 1, 3).reshape(b, s, k * d)
                )
                part = buf.view(b, rows, k, d).permute(0, 2, 1, 3).reshape(b, k, -1)
            total = part if total is None else total + part
        return total

    def _weighted_sums(
        self, feats: dict[str, Any], groups: list[_Group], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """sum_i sum_a w_ia grad_ia for every grouped parameter, from the assembled features."""
        out: dict[str, torch.Tensor] = {}
        factors, onehots, dense = iter(feats["factors"]), iter(feats["onehots"]), iter(feats["dense"])
        for group in groups:
            if group.kind == "factored":
                g, u = next(factors)
                b, _, s, dg = g.shape
                weighted = (g * weights[:, :, None, None]).sum(1).reshape(b * s, dg)
                total = weighted.T @ u.reshape(b * s, -1)
                offset = 0
                for key in group.keys:
                    width = self.problem.params[key].numel() // dg
                    out[key] = total[:, offset : offset + width]
                    offset += width
            elif group.kind == "onehot":
                g, idx = next(onehots)
                p = self.problem.params[group.keys[0]]
                weighted = (g * weights[:, :, None, None]).sum(1).reshape(-1, p.shape[1])
                out[group.keys[0]] = torch.zeros_like(p).index_add_(0, idx.reshape(-1), weighted)
            else:
                for key in group.keys:
                    j = next(dense)
                    out[key] = (j * weights[:, :, None]).sum(dim=(0, 1))
        return out

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

    def contract(self, f1: dict[str, Any], f2: dict[str, Any], on_diagonal: bool) -> torch.Tensor:
        """T(block 1, block 2); on the diagonal of K(X, X), by panels on and above the diagonal only."""
        if on_diagonal:
            return _contract.symmetric(lambda r, c: self._contract(_rows(f1, r), _rows(f1, c)), f1["n"])
        return self._contract(f1, f2)

    def _contract(self, f1: dict[str, Any], f2: dict[str, Any]) -> torch.Tensor:
        mode, k = self.problem.mode, self.problem.k
        total = None
        for (g1, u1), (g2, u2) in zip(f1["factors"], f2["factors"], strict=True):
            b1, s1, b2, s2 = u1.shape[0], u1.shape[1], u2.shape[0], u2.shape[1]
            u_gram = (u1.reshape(b1 * s1, -1) @ u2.reshape(b2 * s2, -1).T).view(b1, s1, b2, s2)
            part = _contract.factored(g1, u_gram, g2, mode)
            total = part if total is None else total.add_(part)
        for (g1, i1), (g2, i2) in zip(f1["onehots"], f2["onehots"], strict=True):
            b1, s1, b2, s2 = i1.shape[0], i1.shape[1], i2.shape[0], i2.shape[1]
            same = (i1.reshape(-1, 1) == i2.reshape(1, -1)).to(g1.dtype).view(b1, s1, b2, s2)
            part = _contract.factored(g1, same, g2, mode)
            total = part if total is None else total.add_(part)
        if f1["dense"] is not None:
            part = _contract.dense(f1["dense"], f2["dense"], mode)
            total = part if total is None else total.add_(part)
        if total is None:  # no selected parameter influences the output
            shape = (f1["n"], f2["n"], *self.problem.tail)
            total = torch.zeros(shape, dtype=self.problem.dtype, device=self.problem.device)
        return total / k if mode == "mean" else total

    # --- costs ---------------------------------------------------------------------------------------------
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


class _InPlace(Exception):
    def __init__(self, modules: set[int]):
        super().__init__("in-place edit")
        self.modules = modules


def _rows(feats: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The features of examples `rows` of a block."""
    return {
        "factors": [(g[rows], u[rows]) for g, u in feats["factors"]],
        "onehots": [(g[rows], idx[rows]) for g, idx in feats["onehots"]],
        "dense": None if feats["dense"] is None else feats["dense"][rows],
        "n": len(range(feats["n"])[rows]),
    }


def layerwise_ntk(
    problem: Problem, x1: torch.Tensor, x2: torch.Tensor | None, plan: Any = None
) -> torch.Tensor:
    """Empirical NTK of `problem` by per-layer Gram products (see the module docstring)."""
    engine = _Layerwise(problem)
    if plan is None:
        plan = engine.plan(_probe_batch(x1, x2))
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
    probe_x = _probe_batch(x1, x2)
    plan = None
    try:
        plan = _Layerwise(problem).plan(probe_x)
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
    k, kp = problem.k, problem.k_pairs
    costs = {
        "jacobian": 3.0 * forward * k * examples + 2.0 * problem.n_params * kp * pairs,
        "ntk-vp": 3.0 * forward * k * examples + 3.0 * forward * k * pairs,
    }
    if plan is not None:
        extra = 3.0 * forward * k if (plan.fallback or plan.residual) else 0.0
        costs["layerwise"] = (
            (1.0 + k) * forward * examples + plan.pair_flops * pairs + (plan.example_flops + extra) * examples
        )
    method = min(costs, key=costs.get)
    if method == "ntk-vp":
        from .ntk_vp import supports_forward_ad

        if not supports_forward_ad(problem.model, problem.params, probe_x[:1]):
            del costs["ntk-vp"]
            method = min(costs, key=costs.get)
    return method, (plan if method == "layerwise" else None)


def explain(
    model: nn.Module, x: torch.Tensor, *, outputs: str = "mean", params: Any = None
) -> dict[str, str]:
    """How the layerwise method treats each parameter on inputs like x.

    Returns parameter name -> "factored" (Gram products), "onehot" (embedding Gram by token equality),
    "dense" (per-example gradients from a structured rule), "module-vjp" (per-example gradients of an unknown
    module by torch.func), "jacobian" (whole-model per-example Jacobians: a use the hooks could not follow) or
    "unused" (the output does not depend on it on these inputs).
    """
    problem, x, _ = make_problem(model, x, None, outputs, "layerwise", params, None, False)
    engine = _Layerwise(problem)
    plan = engine.plan(_probe_batch(x, None))
    structured_keys = {
        key
        for module, keys in engine.owners.values()
        if _structured(module) and id(module) not in plan.fallback
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
