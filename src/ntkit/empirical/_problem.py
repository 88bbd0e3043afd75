"""The validated description of one empirical NTK computation, shared by the methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Problem:
    """Everything a method needs, already checked.

    `params` maps the canonical names (as in `model.named_parameters()`) of the parameters the NTK sums over
    to detached views of them; `k` is the number of outputs per example; `mode` the `outputs` argument.
    """

    model: nn.Module
    params: dict[str, torch.Tensor]
    k: int
    mode: str
    dtype: torch.dtype
    device: torch.device
    batch_size: int | None
    progress: bool | None
    budget: int

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def tail(self) -> tuple[int, ...]:
        """Trailing shape of the result after (n1, n2)."""
        return {"mean": (), "diagonal": (self.k,), "full": (self.k, self.k)}[self.mode]

    @property
    def k_pairs(self) -> int:
        """Output pairs (a, b) a contraction forms: k*k for "full", k otherwise."""
        return self.k * self.k if self.mode == "full" else self.k
