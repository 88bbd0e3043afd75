"""Checks that a model has a per-example NTK at all: no batch mixing, no randomness, usable outputs.

The empirical NTK T_ab(x, x') = <df_a(x)/dtheta, df_b(x')/dtheta> presumes that f(x) is a function of x alone.
BatchNorm in training mode (batch statistics) and dropout in training mode (random masks) break that, and
every fast method would silently return something else, so they are refused with a message that says what to
do.
Layers that are not obviously at fault are covered by a cheap numerical probe on a few examples: the batched
output must equal the outputs of the examples one at a time, and two identical forward passes must agree.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ._batching import OUT_OF_MEMORY

_EVAL_HINT = "call model.eval() before computing its NTK (or remove the layer)"


def check_modes(model: nn.Module) -> None:
    """Refuse layers whose training-mode behaviour mixes the batch or is random."""
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training:
                raise ValueError(
                    f"model: {type(module).__name__} layer {label!r} is in training mode, so it normalises "
                    "with the statistics of the whole batch and the output for one example depends on the "
                    f"others; {_EVAL_HINT} (in eval mode it uses its running statistics)"
                )
            if module.running_mean is None:
                raise ValueError(
                    f"model: {type(module).__name__} layer {label!r} has track_running_stats=False, so it "
                    "uses batch statistics even in eval mode and mixes the examples of a batch; its NTK "
                    "per example is not defined. Use a per-example normalisation (LayerNorm, GroupNorm) or "
                    "track running stats"
                )
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            raise ValueError(
                f"model: {type(module).__name__} layer {label!r} is in training mode and draws a random "
                f"mask at every call, so the network is not a fixed function; {_EVAL_HINT}"
            )


def _forward(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """The model's output on x, re-raising the model's own complaints as a ValueError about `name`."""
    try:
        out = model(x)
    except OUT_OF_MEMORY:  # the device is full, which says nothing about the inputs
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(
            f"model rejected {name} (examples of shape {tuple(x.shape[1:])}, dtype {x.dtype}): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"model must return a single tensor of shape (n, ...) for the NTK, got {type(out).__name__}; "
            "wrap it so that it returns the output you want the NTK of"
        )
    return out


def probe(model: nn.Module, x: torch.Tensor, name: str) -> int:
    """Run the model on a few examples and return its number of outputs k per example.

    Raises when the output does not have one row per example, is not floating or finite, changes between two
    identical calls (randomness), or depends on the other examples in the batch (batch mixing).
    """
    m = x.shape[0]
    with torch.no_grad():
        out = _forward(model, x, name)
        if out.ndim == 0 or out.shape[0] != m:
            raise ValueError(
                f"model must map a batch of n examples to an output of shape (n, ...); for {name} with {m} "
                f"example(s) of shape {tuple(x.shape)} it returned shape {tuple(out.shape)}"
            )
        if not out.is_floating_point():
            raise TypeError(f"model output must be floating point, got {out.dtype}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                f"model output contains NaN or infinite values for {name}; check the model and inputs"
            )
        k = out[0].numel()
        flat = out.reshape(m, k)
        scale = float(flat.abs().max()) + 1e-30
        # float32 reductions in a batch and alone may differ in their last bits, amplified with depth;
        # sqrt(eps) leaves room for that while a real dependence on other examples or a random mask is O(1) of
        # the output.
        tol = torch.finfo(out.dtype).eps ** 0.5 * scale
        again = _forward(model, x, name).reshape(m, k)
        if float((again - flat).abs().max()) > tol:
            raise ValueError(
                "model gives different outputs for the same input in two calls (dropout or another random "
                f"layer in training mode?), so its NTK is not defined; {_EVAL_HINT}"
            )
        if m > 1:
            alone = torch.cat([_forward(model, x[i : i + 1], name).reshape(1, -1) for i in range(m)])
            if alone.shape != flat.shape or float((alone - flat).abs().max()) > tol:
                raise ValueError(
                    "model's output for one example depends on the other examples in the batch (the "
                    "batched output differs from the examples run one at a time), so a per-example NTK is "
                    "not defined. A normalisation over the batch in training mode is the usual cause: "
                    f"{_EVAL_HINT}, or make the forward pass treat examples independently"
                )
    return k


def functional_outputs(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The model's output on the batch x with `params` substituted, reshaped to (b, k)."""
    out = functional_call(model, params, (x,))
    return out.reshape(x.shape[0], -1)
