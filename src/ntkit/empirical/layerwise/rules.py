"""Per-module rules: how a call of a known module type turns into "uses" of its parameters.

A rule takes a recorded call, the module's {local name: canonical key} map and the block size, and returns the
uses of the call's parameters (below). Rules are looked up by exact module type (a subclass may change
`forward`), in `RULES`; `register_rule(module_type)` lets a new layer type (an attention block, ntkit's own
modules) join. A module without a rule, or whose rule cannot take a call (`Unhandled`), gets exact per-example
gradients of its own parameters from torch.func (`fallback_uses`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils import _pytree as pytree

from ...layers import NTKLinear
from ._hooks import _Call

Rule = Callable[[_Call, dict[str, str], int], list]


class _Unhandled(Exception):
    """A module call the structured rules cannot take; its parameters fall back to per-example gradients."""


# Each rule turns a call into "uses" of parameters:
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


RULES: dict[type[nn.Module], Rule] = {}
"""Exact module type -> its rule."""


def register_rule(module_type: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Decorator: `rule(call, keys, b)` becomes the structured rule of modules of exactly `module_type`."""

    def register(rule: Rule) -> Rule:
        RULES[module_type] = rule
        return rule

    return register


register_rule(nn.Linear)(lambda call, keys, b: _linear_uses(call, keys, b, 1.0, 1.0))
register_rule(NTKLinear)(
    lambda call, keys, b: _linear_uses(
        call, keys, b, float(call.module.weight_scale), float(call.module.bias_scale)
    )
)
register_rule(nn.Conv1d)(lambda call, keys, b: _conv_uses(call, keys, b, 1))
register_rule(nn.Conv2d)(lambda call, keys, b: _conv_uses(call, keys, b, 2))
register_rule(nn.Embedding)(_embedding_uses)
for _norm in (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register_rule(_norm)(_norm_uses)


def structured(module: nn.Module) -> bool:
    """Whether a module's exact type has a structured rule."""
    return type(module) in RULES


def uses(
    call: _Call, keys: dict[str, str], b: int, params: dict[str, torch.Tensor], structured: bool
) -> list:
    """The uses of one call: by its module's rule when `structured`, else by per-example gradients."""
    if structured:
        return RULES[type(call.module)](call, keys, b)
    return _fallback_uses(call, keys, b, params)
