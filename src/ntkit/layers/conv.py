"""Convolutions (1-D and 2-D): the CNN-GP / CNTK recursion of a Conv layer and its finite-width module.

Conventions are neural-tangents' (Novak et al. 2019, "Bayesian deep convolutional networks with many channels are
Gaussian processes"; Arora et al. 2019, "On exact computation with an infinitely wide neural net"). For a kernel
of |k| taps, stride s, and padding offsets pad (inputs channels-first, S the covariance of the layer's input
averaged over its C_in channels), NTK parametrization z = (w_std / sqrt(C_in |k|)) W * a + b_std b:

    S'[q, q'] = (w_std^2 / |k|) sum_{d in window} S[s q + d - pad, s q' + d - pad] + b_std^2
    T'[q, q'] = (w_std^2 / |k|) sum_{d in window} T[s q + d - pad, s q' + d - pad] + S'[q, q']

The same offset d shifts both position sets together. Terms that fall in the zero padding are zero but still
count in |k| ("same", "valid"); "circular" wraps around. Standard parametrization (W ~ N(0, w_std^2 / (C_in |k|)),
b ~ N(0, b_std^2)): S' as above, T' = (w_std^2 / |k|) sum T + C_in sum S + [1 if bias].

"same" pads like TensorFlow and JAX ('SAME'): out = ceil(L / s), total = max((out - 1) s + k - L, 0), pad_lo =
total // 2 and the rest on the high side, so even kernel sizes pad one more position after than before (as
neural-tangents does). The window sum is separable: it runs axis by axis, |k_1| + |k_2| shifted additions
instead of |k_1| |k_2|.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import check_choice, check_int
from . import _fused
from .base import Layer
from .dense import _set_affine
from .state import KernelState, LayerError, Shape

PADDINGS = ("same", "valid", "circular")


@dataclass(frozen=True)
class _Axis:
    """The geometry of one spatial axis: filter size, stride, padding before and after, output length."""

    size: int
    stride: int
    lo: int
    hi: int
    out: int


def _axes(
    kind: str, spatial: Shape, size: tuple[int, ...], stride: tuple[int, ...], padding: str
) -> list[_Axis]:
    """The per-axis geometry of a window of `size` with `stride` and `padding` over `spatial`."""
    if len(size) != len(spatial) or len(stride) != len(spatial):
        raise LayerError(
            f"{kind} has kernel_size {size} and stride {stride}, but its input has {len(spatial)} spatial "
            f"axes {spatial}; give one number per spatial axis (or a single int)"
        )
    axes = []
    for length, k, s in zip(spatial, size, stride, strict=True):
        if padding == "valid":
            if k > length:
                raise LayerError(
                    f"{kind} with padding='valid' has a window of {k} along an axis of length {length}: "
                    "use a smaller kernel_size or padding='same'"
                )
            axes.append(_Axis(k, s, 0, 0, (length - k) // s + 1))
        else:
            out = -(-length // s)
            total = max((out - 1) * s + k - length, 0)
            lo = total // 2
            if padding == "circular" and total - lo > length:
                raise LayerError(
                    f"{kind} with padding='circular' needs {total - lo} wrapped positions on an axis of length "
                    f"{length}; use a smaller kernel_size"
                )
            axes.append(_Axis(k, s, lo, total - lo, out))
    return axes


def _wrap(x: torch.Tensor, dims: Sequence[int], lo: int, hi: int) -> torch.Tensor:
    """`x` extended by `lo` positions before and `hi` after along each of `dims`, wrapping around."""
    for dim in dims:
        length = x.shape[dim]
        x = x.index_select(dim, torch.arange(-lo, length + hi, device=x.device) % length)
    return x


def window_sum(x: torch.Tensor, dims: Sequence[int], axis: _Axis, circular: bool) -> torch.Tensor:
    """out[q] = sum_{d < size} x[s q + d - lo] along every one of `dims` at once (the same shift d on each).

    Zero padding is never materialised: each shift adds only the output range whose input index is inside the
    axis. This is the memory-bound core of the convolutional recursion, so it makes as few passes as it can:
    one copy for a shift that covers the whole output, then one in-place addition per other shift.
    """
    lo = axis.lo
    if circular:
        x, lo = _wrap(x, dims, axis.lo, axis.hi), 0
    length = x.shape[dims[0]]
    ranges = []
    for d in range(axis.size):
        first = max(0, -(-(lo - d) // axis.stride))
        last = min(axis.out - 1, (length - 1 + lo - d) // axis.stride)
        if first <= last:
            ranges.append((d, first, last))
    out: torch.Tensor | None = None
    full = [r for r in ranges if r[1] == 0 and r[2] == axis.out - 1]
    if full:
        ranges.remove(full[0])
        out = x[_index(x.ndim, dims, full[0], axis, lo, source=True)].clone()
    else:
        shape = list(x.shape)
        for dim in dims:
            shape[dim] = axis.out
        out = x.new_zeros(shape)
    for r in ranges:
        # add_ on the view: `out[i] += x[j]` would also copy the view back onto itself.
        out[_index(x.ndim, dims, r, axis, lo, source=False)].add_(
            x[_index(x.ndim, dims, r, axis, lo, source=True)]
        )
    return out


def _index(
    ndim: int, dims: Sequence[int], r: tuple[int, int, int], axis: _Axis, lo: int, source: bool
) -> tuple:
    """The slices of one shift d over output positions first..last: into x (`source`) or into the output."""
    d, first, last = r
    index: list[slice] = [slice(None)] * ndim
    for dim in dims:
        if source:
            start = axis.stride * first + d - lo
            index[dim] = slice(start, start + axis.stride * (last - first) + 1, axis.stride)
        else:
            index[dim] = slice(first, last + 1)
    return tuple(index)


def _tuple(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if not 1 <= len(value) <= 2:
            raise ValueError(f"{name} must be an int or a tuple of 1 or 2 ints, got {value!r}")
        return tuple(check_int(v, name, minimum=1) for v in value)
    return (check_int(value, name, minimum=1),)


def _per_axis(value: tuple[int, ...], spatial: Shape) -> tuple[int, ...]:
    return value * len(spatial) if len(value) == 1 else value


def _check_spatial(kind: str, in_shape: Shape) -> Shape:
    if len(in_shape) not in (2, 3):
        raise LayerError(
            f"{kind} needs channels-first spatial inputs, (C, L) or (C, H, W) per example, got the shape "
            f"{in_shape}; pass inputs of shape (n, C, L) or (n, C, H, W)"
        )
    return in_shape[1:]


class NTKConv(nn.Module):
    """A 1-D or 2-D convolution in ntkit's parametrization: y = conv(pad(x) * weight_scale, W) + bias_scale b.

    The convolution itself is a plain `torch.nn.Conv1d`/`Conv2d` (`self.conv`, no bias, no padding of its own),
    so tools that recognise torch's convolutions (the layerwise empirical NTK) see it; the padding, which may
    be asymmetric (TensorFlow's 'SAME' for even sizes or strides), and the scales are applied around it. In the
    NTK parametrization W, b ~ N(0, 1), weight_scale = w_std / sqrt(C_in |k|) and bias_scale = b_std; in the
    standard one the scales are 1 and W ~ N(0, w_std^2 / (C_in |k|)), b ~ N(0, b_std^2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        pads: tuple[tuple[int, int], ...],
        circular: bool,
        weight_scale: float,
        bias_scale: float | None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        conv = nn.Conv1d if len(kernel_size) == 1 else nn.Conv2d
        self.conv = conv(in_channels, out_channels, kernel_size, stride, bias=False, dtype=dtype)
        self.pads = tuple(p for lo_hi in reversed(pads) for p in lo_hi)  # F.pad order: last axis first
        self.circular = circular
        self.weight_scale = weight_scale
        self.bias_scale = 0.0 if bias_scale is None else bias_scale
        self.bias = None if bias_scale is None else nn.Parameter(torch.empty(out_channels, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads, mode="circular" if self.circular else "constant")
        y = self.conv(x * self.weight_scale)
        if self.bias is not None:
            y = y + (self.bias_scale * self.bias).view(-1, *([1] * (y.ndim - 2)))
        return y

    def extra_repr(self) -> str:
        return (
            f"pads={self.pads}, circular={self.circular}, weight_scale={self.weight_scale:.4g}, "
            f"bias_scale={self.bias_scale:.4g}"
        )


class Conv(Layer):
    """A convolution of `channels` output channels over 1-D (C, L) or 2-D (C, H, W) inputs.

    Args:
        channels: output channels of the finite network (the kernel ignores it except in the standard
            parametrization, where the next layer's NTK grows with it).
        kernel_size: int or tuple, one size per spatial axis.
        stride: int or tuple.
        padding: "same" (zeros, output length ceil(L / stride)), "valid" (no padding) or "circular" (wraps).
        w_std, b_std, parametrization, trainable: as for `Dense` (b_std=None: no bias).

    Kernel cost per pair: O(|k| P) for the spatial diagonal (Flatten readouts), O(|k| P^2) for the full spatial
    covariance (pooling readouts), P the number of positions.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: str = "same",
        w_std: float = 1.0,
        b_std: float | None = 0.0,
        parametrization: str = "ntk",
        trainable: bool = True,
    ) -> None:
        self.channels = check_int(channels, "channels", minimum=1)
        self.kernel_size = _tuple(kernel_size, "kernel_size")
        self.stride = _tuple(stride, "stride")
        self.padding = check_choice(padding, "padding", PADDINGS)
        _set_affine(self, w_std, b_std, parametrization, trainable)

    def __repr__(self) -> str:
        size = self.kernel_size[0] if len(self.kernel_size) == 1 else self.kernel_size
        stride = self.stride[0] if len(self.stride) == 1 else self.stride
        b_std = self.b_std if self.b_std is None else f"{self.b_std:g}"
        return (
            f"Conv({self.channels}, kernel_size={size}, stride={stride}, padding={self.padding!r}, "
            f"w_std={self.w_std:g}, b_std={b_std}, parametrization={self.parametrization!r}, "
            f"trainable={self.trainable})"
        )

    def _config(self) -> tuple:
        return (
            self.channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.w_std,
            self.b_std,
            self.parametrization,
            self.trainable,
        )

    def _geometry(self, in_shape: Shape) -> list[_Axis]:
        spatial = _check_spatial("Conv", in_shape)
        return _axes(
            "Conv",
            spatial,
            _per_axis(self.kernel_size, spatial),
            _per_axis(self.stride, spatial),
            self.padding,
        )

    def out_shape(self, in_shape: Shape) -> Shape:
        return (self.channels, *(axis.out for axis in self._geometry(in_shape)))

    def map_state(self, state: KernelState) -> KernelState:
        axes = self._geometry(state.shape)
        k = len(axes)
        taps = math.prod(axis.size for axis in axes)
        circular = self.padding == "circular"

        def windows(x: torch.Tensor) -> torch.Tensor:
            for i, axis in enumerate(axes):
                x = window_sum(x, (i, k + i) if state.full else (i,), axis, circular)
            return x

        scale, b2 = self.w_std**2 / taps, (self.b_std or 0.0) ** 2

        def self_map(cov: torch.Tensor) -> torch.Tensor:
            cov = windows(cov)
            return cov.mul_(scale).add_(b2)

        done, kernels = False, None
        if state.need_ntk and self.trainable and self.parametrization == "ntk" and _fused.usable(state.nngp):
            geometry = tuple((a.size, a.stride, a.lo, a.hi, a.out) for a in axes)
            done, kernels = _fused.run(
                _fused.conv_ntk,
                state.nngp,
                state.ntk,
                geometry,
                state.full,
                circular,
                _fused.scalar(scale, state.nngp),
                _fused.scalar(b2, state.nngp),
            )
        s, t = kernels if done else self._eager_map(state, windows, scale, b2)
        return state.replace(
            nngp=s,
            ntk=t,
            **state.map_covariances(self_map),
            shape=self.out_shape(state.shape),
            gaussian=True,
        )

    def _eager_map(
        self, state: KernelState, windows: Callable[[torch.Tensor], torch.Tensor], scale: float, b2: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(S', T') of the module docstring, in as few passes over memory as the update allows."""
        need_ntk, trainable = state.need_ntk, self.trainable
        standard = self.parametrization == "standard"
        s = windows(state.nngp)
        t = None if state.ntk is None or not need_ntk else windows(state.ntk)
        if t is not None and (standard or not trainable) and scale != 1.0:
            t.mul_(scale)
        if need_ntk and trainable and standard:
            # s holds the window sums (not yet scaled): the term is C_in sum_d S.
            channels = float(state.shape[0])
            t = torch.mul(s, channels) if t is None else t.add_(s, alpha=channels)
            if self.b_std is not None:
                t.add_(1.0)
        if scale != 1.0:
            s.mul_(scale)
        if b2 != 0.0:
            s.add_(b2)
        if need_ntk and trainable and not standard:
            t = s.clone() if t is None else torch.add(s, t, alpha=scale, out=t)
        return s, t

    def module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        axes = self._geometry(in_shape)
        fan_in = in_shape[0] * math.prod(axis.size for axis in axes)
        ntk = self.parametrization == "ntk"
        layer = NTKConv(
            in_shape[0],
            self.channels,
            tuple(axis.size for axis in axes),
            tuple(axis.stride for axis in axes),
            tuple((axis.lo, axis.hi) for axis in axes),
            self.padding == "circular",
            weight_scale=self.w_std / math.sqrt(fan_in) if ntk else 1.0,
            bias_scale=None if self.b_std is None else (self.b_std if ntk else 1.0),
            dtype=dtype,
        )
        with torch.no_grad():
            layer.conv.weight.normal_(
                0.0, 1.0 if ntk else self.w_std / math.sqrt(fan_in), generator=generator
            )
            if layer.bias is not None:
                layer.bias.normal_(0.0, 1.0 if ntk else self.b_std, generator=generator)
        layer.requires_grad_(self.trainable)
        return layer
