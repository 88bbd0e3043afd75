"""Inputs and small helpers the experiments share: points on the unit circle, a row of the empirical NTK."""

from __future__ import annotations

import math

import torch

__all__ = ["TRAIN_ANGLES", "TRAIN_TARGETS", "angle_grid", "circle", "circle_task", "ntk_row", "rms"]


def circle(angles: torch.Tensor) -> torch.Tensor:
    """The points (cos g, sin g) of the unit circle, (len(angles), 2)."""
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def angle_grid(count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``count`` angles evenly spaced on [-pi, pi]."""
    return torch.linspace(-math.pi, math.pi, count, dtype=dtype, device=device)


def ntk_row(model: torch.nn.Module, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Theta(x0, x) of ``model`` for one point x0 (1, d) against x (n, d), as (n,) float64."""
    from ..empirical import empirical_ntk

    return empirical_ntk(model, x0, x, outputs="mean")[0].to(torch.float64)


def rms(values: torch.Tensor) -> float:
    """Root mean square of all entries."""
    return float(values.to(torch.float64).pow(2).mean().sqrt())


# The least-squares task of Jacot et al.'s figures 1 and 2 (the paper does not list its points): four points of
# the unit circle with fixed targets, the same for every network.
TRAIN_ANGLES = (-2.2, -0.9, 0.6, 2.0)
TRAIN_TARGETS = (0.4, -0.5, 0.3, -0.2)


def circle_task(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The four training points (4, 2) and their targets (4, 1)."""
    angles = torch.tensor(TRAIN_ANGLES, dtype=dtype, device=device)
    targets = torch.tensor(TRAIN_TARGETS, dtype=dtype, device=device)[:, None]
    return circle(angles), targets
