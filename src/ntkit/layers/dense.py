"""Fully-connected layers: the kernel recursion of a Dense layer and its finite-width module.

Conventions (identical to neural-tangents, so numbers can be compared one to one), with S the covariance of the
layer's input, T the NTK accumulated so far and n_in the input width:

- NTK parametrization (Jacot et al. 2018): z = (w_std / sqrt(n_in)) W a + b_std b with W, b ~ N(0, 1);
  S' = w_std**2 S + b_std**2 and T' = w_std**2 T + S'.
- standard parametrization (Sohl-Dickstein et al. 2020): z = W a + b with W ~ N(0, w_std**2 / n_in),
  b ~ N(0, b_std**2); S' = w_std**2 S + b_std**2 and T' = w_std**2 T + n_in S + [1 if there is a bias].

A frozen layer (trainable=False) still propagates S and T but adds no term of its own to T.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._validation import check_choice, check_int, check_real
from .base import Layer
from .state import KernelState, LayerError, Shape

PARAMETRIZATIONS = ("ntk", "standard")


class NTKLinear(nn.Module):
    """Affine map in the NTK parametrization: y = (w_std / sqrt(in)) x W^T + b_std b, with W, b ~ N(0, 1).

    The parameters are standard normal; the scales are constants (`weight_scale`, `bias_scale`), so gradient
    descent on this module is gradient descent in the NTK parametrization (Jacot et al. 2018).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        w_std: float = 1.0,
        b_std: float | None = 0.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.weight_scale = check_real(w_std, "w_std", minimum=0.0) / math.sqrt(in_features)
        self.bias_scale = 0.0 if b_std is None else check_real(b_std, "b_std", minimum=0.0)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = (
            None if b_std is None else nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every parameter from N(0, 1)."""
        with torch.no_grad():
            for p in (self.weight, self.bias):
                if p is not None:
                    p.normal_(generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaling the input rather than the output is the same map; it was measured faster under forward-mode
        # AD (linearized models), where each elementwise op on dual tensors is costly.
        return torch.nn.functional.linear(
            x * self.weight_scale, self.weight, None if self.bias is None else self.bias_scale * self.bias
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight_scale={self.weight_scale:.4g}, bias_scale={self.bias_scale:.4g}, bias={self.bias is not None}"
        )


class Dense(Layer):
    """A fully-connected layer of `width` output units, described once for both worlds.

    Acts on features, shape (d,): after a spatial layer put `Flatten()` or `GlobalAvgPool()` before it.

    Args:
        width: number of output units of the finite network (the infinite-width kernel ignores it, except in the
            standard parametrization, where the NTK of the next layer grows with it).
        w_std: weight standard deviation sigma_w.
        b_std: bias standard deviation sigma_b; None for a layer without bias.
        parametrization: "ntk" or "standard" (see the module docstring for the recursions).
        trainable: False freezes the layer: it propagates, but its parameters add nothing to the NTK.
    """

    def __init__(
        self,
        width: int,
        w_std: float = 1.0,
        b_std: float | None = 0.0,
        parametrization: str = "ntk",
        trainable: bool = True,
    ) -> None:
        self.width = check_int(width, "width", minimum=1)
        _set_affine(self, w_std, b_std, parametrization, trainable)

    def __repr__(self) -> str:
        return (
            f"Dense({self.width}, w_std={self.w_std:g}, b_std={self.b_std if self.b_std is None else f'{self.b_std:g}'}"
            f", parametrization={self.parametrization!r}, trainable={self.trainable})"
        )

    def _config(self) -> tuple:
        return (self.width, self.w_std, self.b_std, self.parametrization, self.trainable)

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 1:
            raise LayerError(
                f"Dense acts on features, but its input has the spatial shape {in_shape}; "
                "put Flatten() or GlobalAvgPool() before it"
            )
        return (self.width,)

    # --- infinite width -------------------------------------------------------------------------------------
    def map_state(self, state: KernelState) -> KernelState:
        """S' = w_std**2 S + b_std**2 on every covariance; T as in the module docstring (in place)."""
        n_in = state.shape[0]
        nngp, ntk = _cross(self, state.nngp, state.ntk, n_in, state.need_ntk)
        return state.replace(
            nngp=nngp,
            ntk=ntk,
            **state.map_covariances(self._diag),
            shape=(self.width,),
            gaussian=True,
        )

    def _diag(self, s: torch.Tensor) -> torch.Tensor:
        """Variance recursion S' = w_std**2 S + b_std**2 on a vector of variances (returns a new tensor)."""
        return s * self.w_std**2 + (self.b_std or 0.0) ** 2

    # --- finite width ---------------------------------------------------------------------------------------
    def module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        """The finite layer, drawn on the CPU from `generator` (so a seed gives the same network on any device)."""
        self.out_shape(in_shape)
        (in_features,) = in_shape
        if self.parametrization == "ntk":
            layer: nn.Module = NTKLinear(in_features, self.width, self.w_std, self.b_std, dtype=dtype)
            layer.reset_parameters(generator)
        else:
            layer = nn.Linear(in_features, self.width, bias=self.b_std is not None, dtype=dtype)
            with torch.no_grad():
                layer.weight.normal_(0.0, self.w_std / math.sqrt(in_features), generator=generator)
                if layer.bias is not None:
                    layer.bias.normal_(0.0, self.b_std, generator=generator)
        layer.requires_grad_(self.trainable)
        return layer


def _set_affine(
    layer: Layer, w_std: float, b_std: float | None, parametrization: str, trainable: bool
) -> None:
    """Validate and set the parameters that every affine layer (Dense, Conv) shares."""
    layer.w_std = check_real(w_std, "w_std", minimum=0.0)
    layer.b_std = None if b_std is None else check_real(b_std, "b_std", minimum=0.0)
    layer.parametrization = check_choice(parametrization, "parametrization", PARAMETRIZATIONS)
    if not isinstance(trainable, bool):
        raise TypeError(f"trainable must be a bool, got {type(trainable).__name__}")
    layer.trainable = trainable


def _cross(
    layer: Dense | Any, s: torch.Tensor, t: torch.Tensor | None, n_in: int, need_ntk: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One affine layer of the covariance and NTK recursion on a tile; updates `s` and `t` in place.

    `layer` has w_std, b_std, parametrization and trainable (Dense, and Conv after its window sums). `t` None
    stands for an NTK that is still zero (nothing trainable below), which saves a pass over memory. In the
    standard parametrization the NTK gains n_in S of the layer's *input*, so that comes before s is updated.
    """
    w2 = layer.w_std**2
    b2 = (layer.b_std or 0.0) ** 2
    if need_ntk:
        if t is not None and w2 != 1.0:
            t.mul_(w2)
        if layer.trainable and layer.parametrization == "standard":
            if t is None:
                t = torch.mul(s, float(n_in))
            else:
                t.add_(s, alpha=float(n_in))
            if layer.b_std is not None:
                t.add_(1.0)
    if w2 != 1.0:
        s.mul_(w2)
    if b2 != 0.0:
        s.add_(b2)
    if need_ntk and layer.trainable and layer.parametrization == "ntk":
        t = s.clone() if t is None else t.add_(s)
    return s, t
