"""The result of an infinite-width kernel computation: the NNGP and NTK matrices of one pair of inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Kernel:
    """NNGP and NTK matrices K(x1, x2) and T(x1, x2), each of shape (n1, n2).

    `nngp[i, j]` is the covariance of one output unit at x1[i] and x2[j] over random initialisations of the
    infinitely wide network (Neal 1996; Lee et al. 2018); `ntk[i, j]` its neural tangent kernel (Jacot et al.
    2018). A network with k outputs has the kernels `nngp * I_k` and `ntk * I_k`. A matrix that was not requested
    (see `get=` of `Serial.kernel`) is None.
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None

    def __repr__(self) -> str:
        def describe(m: torch.Tensor | None) -> str:
            return (
                "None" if m is None else f"Tensor(shape={tuple(m.shape)}, dtype={m.dtype}, device={m.device})"
            )

        return f"Kernel(nngp={describe(self.nngp)}, ntk={describe(self.ntk)})"
