"""`ntkit demo`: how far the NTK of finite networks is from the infinite-width NTK, width by width.

The built-in example: a ReLU network with two hidden layers (NTK parametrization, b_std = 0.1) on 48 points of a
great circle of the unit sphere in R^8. At each width m several networks are drawn by `Serial.build`, and the
relative Frobenius error ||T_m - T_inf||_F / ||T_inf||_F of their empirical NTK against the analytic one is
reported; it falls like m**-1/2 (Jacot et al. 2018; Hanin & Nica 2020 for the size of the fluctuations).
"""

from __future__ import annotations

import argparse
import math

import torch

from ._validation import check_int
from .layers import ReLU, mlp


def example_inputs(n: int = 48, dim: int = 8, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n points on a great circle of the unit sphere in R^dim (a fixed rotation of the unit circle in R^2)."""
    angle = torch.linspace(0, 2 * math.pi, n + 1, dtype=dtype)[:-1]
    circle = torch.stack([angle.cos(), angle.sin()], dim=1)
    rotation, _ = torch.linalg.qr(
        torch.randn(dim, dim, generator=torch.Generator().manual_seed(0), dtype=dtype)
    )
    return circle @ rotation[:2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 4096], help="hidden widths")
    parser.add_argument("--seeds", type=int, default=8, help="networks drawn per width (default 8)")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def run(args: argparse.Namespace) -> int:
    from .analysis import width_study

    depth = check_int(args.depth, "--depth", minimum=1)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device {args.device!r} is not a torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this PyTorch sees no CUDA device")
    x = example_inputs().to(device)
    print(
        f"ReLU network, {depth} hidden layers, NTK parametrization, b_std = 0.1; "
        f"{x.shape[0]} inputs on a circle in R^{x.shape[1]}, float64, {x.device}"
    )
    study = width_study(
        lambda m: mlp(depth, m, activation=ReLU(), b_std=0.1), x, args.widths, args.seeds, progress=True
    )
    print(f"\n{'width':>8}  {'||T_m - T_inf||_F / ||T_inf||_F':>32}  {'error x sqrt(width)':>20}")
    for width, mean, std in zip(study.widths, study.mean.tolist(), study.std.tolist(), strict=True):
        spread = f"{mean:.4f} +- {std:.4f}"
        print(f"{width:>8}  {spread:>32}  {mean * math.sqrt(width):>20.3f}")
    print(f"\nmean over {len(study.seeds)} networks per width (+- their standard deviation)")
    if len(study.widths) > 1:
        print(f"fitted log-log slope: {study.slope:+.3f}  (theory: -0.5, the error shrinks like width**-1/2)")
    return 0
