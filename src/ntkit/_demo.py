"""`ntkit demo`: how far the NTK of finite networks is from the infinite-width NTK, width by width.

The built-in example: a two-hidden-layer ReLU network (NTK parametrization, b_std = 0.1) on 48 points of the
unit circle in R^2 lifted to R^8 by a fixed random rotation. For each width m, several networks are drawn by
`Serial.build` and their empirical NTK is compared with the analytic one; the relative Frobenius error
||T_m - T_inf||_F / ||T_inf||_F falls like m**-1/2 (Jacot et al. 2018; Hanin & Nica 2020 for the fluctuations).
"""

from __future__ import annotations

import argparse
import math

import torch
from tqdm.auto import tqdm

from .layers import ReLU, mlp


def example_inputs(n: int = 48, dim: int = 8, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n points on a great circle of the unit sphere in R^dim (a fixed rotation of the unit circle in R^2)."""
    angle = torch.linspace(0, 2 * math.pi, n + 1, dtype=dtype)[:-1]
    circle = torch.stack([angle.cos(), angle.sin()], dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0), dtype=dtype))
    return circle @ rotation[:2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 4096], help="hidden widths")
    parser.add_argument("--seeds", type=int, default=4, help="networks drawn per width")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def run(args: argparse.Namespace) -> int:
    from .empirical import empirical_ntk

    if args.seeds < 1 or args.depth < 1 or min(args.widths) < 1:
        raise ValueError("--widths, --seeds and --depth must be positive")
    x = example_inputs().to(args.device)
    arch = mlp(args.depth, 1, activation=ReLU(), b_std=0.1)
    t_inf = arch.kernel(x, get="ntk").ntk
    print(f"{arch!r}\ninputs: {x.shape[0]} points of dimension {x.shape[1]}, float64, on {x.device}\n")
    print(f"{'width':>8} {'rel. error ||T_m - T_inf||_F / ||T_inf||_F':>46}  {'x sqrt(width)':>14}")
    errors = []
    work = [(w, s) for w in args.widths for s in range(args.seeds)]
    per_width: dict[int, list[float]] = {w: [] for w in args.widths}
    for width, seed in tqdm(work, desc="empirical NTKs", unit="net", leave=False):
        net = mlp(args.depth, width, activation=ReLU(), b_std=0.1).build(x.shape[1], seed=seed, dtype=x.dtype)
        t_m = empirical_ntk(net.to(x.device), x)
        per_width[width].append(float(torch.linalg.norm(t_m - t_inf) / torch.linalg.norm(t_inf)))
    for width in args.widths:
        e = torch.tensor(per_width[width], dtype=torch.float64)
        mean, std = float(e.mean()), float(e.std()) if len(e) > 1 else 0.0
        errors.append(mean)
        print(f"{width:>8} {mean:>32.4f} +- {std:.4f} (n={len(e)})  {mean * math.sqrt(width):>14.3f}")
    if len(args.widths) > 1:
        logw = torch.tensor([math.log(w) for w in args.widths], dtype=torch.float64)
        loge = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
        slope = float(((logw - logw.mean()) * (loge - loge.mean())).sum() / ((logw - logw.mean()) ** 2).sum())
        print(f"\nfitted log-log slope: {slope:+.3f}  (theory: -0.5; the error shrinks like width**-1/2)")
    return 0
