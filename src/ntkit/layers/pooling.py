"""Spatial readouts and pooling: AvgPool, GlobalAvgPool and Flatten (linear, no parameters).

On the kernels (neural-tangents' conventions; Novak et al. 2019, Arora et al. 2019):

    AvgPool(k, s):    S'[q, q'] = (1 / |k|^2) sum_{d, d' in window} S[s q + d, s q' + d']   (and T likewise)
    GlobalAvgPool:    S' = mean over all pairs (p, p') of S[p, p']                          (and T likewise)
    Flatten:          S' = mean over p of S[p, p]   (the next Dense has fan-in C P)          (and T likewise)

Pooling mixes positions, so it needs the full spatial covariance from the layers below: O(P^2) entries per pair
of inputs. A Flatten readout needs only the spatial diagonal: O(P) per pair. `kernel()` keeps the cheaper state
whenever no pooling layer asks for the full one. Zero padding ("same") counts in the window's size, as in
neural-tangents (normalize_edges=False) and torch's `count_include_pad=True`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import check_choice
from .base import Layer
from .conv import _axes, _check_spatial, _per_axis, _tuple, window_sum
from .state import KernelState, LayerError, Shape


class _AvgPoolModule(nn.Module):
    def __init__(self, size: tuple[int, ...], stride: tuple[int, ...], pads: tuple[int, ...]) -> None:
        super().__init__()
        self.size, self.stride, self.pads = size, stride, pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        pool = F.avg_pool1d if len(self.size) == 1 else F.avg_pool2d
        return pool(x, self.size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.size}, stride={self.stride}, pads={self.pads}"


class AvgPool(Layer):
    """Average pooling over windows of `kernel_size` (int or tuple) with `stride` (default: the window size).

    `padding` is "valid" (windows inside the input) or "same" (zero padding, as for `Conv`, counted in the
    average). Needs the full spatial covariance from below.
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: str = "valid",
    ) -> None:
        self.kernel_size = _tuple(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _tuple(stride, "stride")
        self.padding = check_choice(padding, "padding", ("valid", "same"))

    def __repr__(self) -> str:
        return f"AvgPool(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r})"

    def _config(self) -> tuple:
        return (self.kernel_size, self.stride, self.padding)

    def _geometry(self, in_shape: Shape):
        spatial = _check_spatial("AvgPool", in_shape)
        size = _per_axis(self.kernel_size, spatial)
        stride = _per_axis(self.stride, spatial)
        return _axes("AvgPool", spatial, size, stride, self.padding)

    def out_shape(self, in_shape: Shape) -> Shape:
        return (in_shape[0], *(axis.out for axis in self._geometry(in_shape)))

    def requires_full(self, full_above: bool) -> bool:
        return True

    def map_state(self, state: KernelState) -> KernelState:
        axes = self._geometry(state.shape)
        if not state.full:
            raise LayerError(
                "AvgPool needs the full spatial covariance, but the state holds its diagonal only"
            )
        k = len(axes)
        scale = 1.0 / math.prod(axis.size for axis in axes) ** 2

        def pool(x: torch.Tensor) -> torch.Tensor:
            for i, axis in enumerate(axes):
                # Unlike a convolution, the two position sets are averaged independently.
                x = window_sum(x, (i,), axis, circular=False)
                x = window_sum(x, (k + i,), axis, circular=False)
            return x.mul_(scale)

        return state.map_linear(pool, shape=self.out_shape(state.shape))

    def module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        axes = self._geometry(in_shape)
        pads = tuple(p for axis in reversed(axes) for p in (axis.lo, axis.hi))
        return _AvgPoolModule(tuple(a.size for a in axes), tuple(a.stride for a in axes), pads)


class _GlobalAvgPoolModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))


class GlobalAvgPool(Layer):
    """The mean over all positions of each channel: (C, *spatial) -> (C,). Needs the full spatial covariance."""

    def out_shape(self, in_shape: Shape) -> Shape:
        _check_spatial("GlobalAvgPool", in_shape)
        return (in_shape[0],)

    def requires_full(self, full_above: bool) -> bool:
        return True

    def map_state(self, state: KernelState) -> KernelState:
        self.out_shape(state.shape)
        if not state.full:
            raise LayerError(
                "GlobalAvgPool needs the full spatial covariance, but the state holds its diagonal only"
            )
        k = len(state.spatial)

        def mean(x: torch.Tensor) -> torch.Tensor:
            # One position set at a time: a single reduction over both strided sets ran 3.5x slower.
            positions = math.prod(x.shape[:k])
            return x.sum(dim=tuple(range(k, 2 * k))).sum(dim=tuple(range(k))).div_(positions * positions)

        return state.map_linear(mean, shape=(state.shape[0],), full=False)

    def module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        self.out_shape(in_shape)
        return _GlobalAvgPoolModule()


class Flatten(Layer):
    """Flattens channels and positions into features: (C, *spatial) -> (C * P,); features pass unchanged.

    Needs only the spatial diagonal from below: the cheap readout, O(P) per pair of inputs.
    """

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)

    def requires_full(self, full_above: bool) -> bool:
        return False

    def map_state(self, state: KernelState) -> KernelState:
        if not state.spatial:
            return state
        k = len(state.spatial)
        positions = math.prod(state.spatial)

        def mean_diagonal(x: torch.Tensor) -> torch.Tensor:
            if state.full:
                return (
                    x.reshape(positions, positions, *x.shape[2 * k :]).diagonal(dim1=0, dim2=1).mean(dim=-1)
                )
            return x.mean(dim=tuple(range(k)))

        return state.map_linear(mean_diagonal, shape=self.out_shape(state.shape), full=False)

    def module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        return nn.Flatten()
