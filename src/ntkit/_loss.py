"""The one squared loss of ntkit, shared by real training, the closed forms, the ODE and the analyses.

    reduction="mean":  L = 1/(2N) sum ||f(x_i) - y_i||^2,  N = y.numel() (the number of label entries)
    reduction="sum":   L = 1/2 sum ||f(x_i) - y_i||^2     (N = 1)

Gradient descent with learning rate eta on it moves the outputs by -eta/N T (f - y) per step (T the NTK), so
every formula of the dynamics sees eta only through c = eta / N (docs/architecture.md).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")


def label_entries(y: torch.Tensor, reduction: str) -> int:
    """N of the loss: the number of label entries for "mean", 1 for "sum"."""
    return y.numel() if reduction == "mean" else 1


def squared_loss(outputs: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """L of the module docstring; `outputs` of y's shape, or with leading axes (e.g. time) kept in the result."""
    lead = outputs.ndim - y.ndim
    total = 0.5 * (outputs - y).pow(2).sum(dim=tuple(range(lead, outputs.ndim)))
    return total / label_entries(y, reduction)
