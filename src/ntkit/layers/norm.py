"""Layer normalisation over features (or, for spatial inputs, over channels at each position).

At infinite width the mean over a layer's units is zero and its mean square is the variance S(x, x)[p, p], a
constant, so the normalised unit is z / sqrt(S(x, x)[p, p]) (neural-tangents' `stax.LayerNorm`):

    S'[p, p'] = S[p, p'] / sqrt(v1[p] v2[p']),      T'[p, p'] = T[p, p'] / sqrt(v1[p] v2[p']),

with v1, v2 the variances of the two inputs. A zero variance (a unit that is identically zero) gives zero.
The finite module subtracts the mean over channels and divides by the root mean square deviation (plus `eps`),
with no learned affine part.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_real
from ._quadrature import _safe_rsqrt
from .base import Layer
from .state import KernelState, Shape


class _ChannelNorm(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


class LayerNorm(Layer):
    """Normalises each example over its features/channels (per position): the kernel divided by sqrt(v1 v2).

    `eps` is added to the variance in the finite module only (the kernel's variances are exact).
    """

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = check_real(eps, "eps", minimum=0.0)

    def __repr__(self) -> str:
        return f"LayerNorm(eps={self.eps:g})"

    def _config(self) -> tuple:
        return (self.eps,)

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def map_state(self, state: KernelState) -> KernelState:
        r1, r2 = (_safe_rsqrt(v) for v in state.pair_variances())
        nngp = state.nngp.mul_(r1).mul_(r2)
        ntk = None if state.ntk is None else state.ntk.mul_(r1).mul_(r2)

        def normalise(cov: torch.Tensor) -> torch.Tensor:
            rp, rq = (_safe_rsqrt(v) for v in state.self_variances(cov))
            return cov.mul(rp).mul_(rq)

        return state.replace(
            nngp=nngp,
            ntk=ntk,
            **state.map_covariances(normalise),
        )

    def module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        return _ChannelNorm(self.eps)
