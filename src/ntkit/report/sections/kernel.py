"""Section 1, the kernel: the empirical NTK of the network at initialisation against the analytic NTK."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .._base import Check, SectionResult
from .._context import Context
from .._plot import new_figure, save_figure

TITLE = "1. The kernel at initialisation"


def _inputs(ctx: Context, count: int) -> tuple[torch.Tensor, str]:
    """A grid on the input range for 1-D data; otherwise the first training points, in their order."""
    if ctx.data.input_dim == 1:
        x = ctx.data.x_train
        low, high = float(x.min()), float(x.max())
        grid = torch.linspace(low, high, count, dtype=ctx.dtype, device=ctx.device)[:, None]
        return grid, f"{count} evenly spaced inputs x on [{low:.2f}, {high:.2f}]"
    count = min(count, ctx.data.x_train.shape[0])
    return ctx.data.x_train[:count], f"the first {count} training inputs"


def run(ctx: Context, figures: Path) -> SectionResult:
    from ...empirical import empirical_ntk

    width = ctx.config["model"]["width"]
    x, described = _inputs(ctx, ctx.config["kernel"]["grid"])
    analytic = ctx.arch().kernel(x, get="ntk").ntk
    empirical = empirical_ntk(ctx.initial_network, x, outputs="mean")
    difference = empirical - analytic
    relative = float(difference.norm() / analytic.norm())
    worst = float(difference.abs().max() / analytic.abs().max())

    figure, axes = new_figure(1, 3, width=11.0, row_height=3.7)
    extent = None
    if ctx.data.input_dim == 1:
        extent = (float(x[0, 0]), float(x[-1, 0]), float(x[-1, 0]), float(x[0, 0]))
    # The two kernels are compared by eye, so they share one colour scale (and one colour bar); the difference
    # is a different quantity, on its own scale centred at 0.
    low = min(float(empirical.min()), float(analytic.min()), 0.0)
    high = max(float(empirical.max()), float(analytic.max()))
    bound = float(difference.abs().max()) or 1.0
    panels = (
        (empirical, f"empirical NTK, width {width}", "viridis", (low, high)),
        (analytic, "analytic NTK (width inf)", "viridis", (low, high)),
        (difference, "empirical - analytic", "RdBu_r", (-bound, bound)),
    )
    images = []
    for ax, (matrix, title, cmap, limits) in zip(axes, panels, strict=True):
        values = matrix.detach().cpu().numpy()
        images.append(
            ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], extent=extent, aspect="equal")
        )
        ax.set_title(title)
        ax.grid(False)
        ax.set_xlabel("x'" if extent else "input index j")
        ax.set_ylabel("x" if extent else "input index i")
    figure.colorbar(images[0], ax=axes[:2], shrink=0.8, label="T(x, x') (both kernels)")
    figure.colorbar(images[2], ax=axes[2], shrink=0.8)
    save_figure(figure, figures, "kernel")

    expected = 1.0 / math.sqrt(width)
    caption = (
        "Theory (Jacot et al. 2018): at initialisation the empirical NTK of a finite network equals the "
        f"analytic infinite-width NTK up to fluctuations of order 1/sqrt(width) = {expected:.3f}. Measured "
        f"on {described}: the relative Frobenius error ||T_m - T_inf|| / ||T_inf|| is {relative:.4f} at "
        f"width {width} (largest entry-wise error {worst:.4f} of the largest entry). The two kernels share one "
        "colour scale; the difference has its own, centred at 0."
    )
    check = Check(
        "kernel at initialisation",
        f"empirical NTK within a few 1/sqrt(width) = {expected:.3f} of the analytic NTK",
        f"relative error {relative:.4f} at width {width}",
        relative < 5.0 * expected,
        threshold=f"||T_m - T_inf||_F / ||T_inf||_F < 5 / sqrt(width) = {5.0 * expected:.3f}",
        judged_at=f"initialisation (no training), on {described}",
    )
    return SectionResult(
        name="kernel",
        title=TITLE,
        caption=caption,
        metrics={
            "width": width,
            "inputs": x[:, 0] if ctx.data.input_dim == 1 else None,
            "relative_frobenius_error": relative,
            "max_entry_error_relative": worst,
            "one_over_sqrt_width": expected,
            "empirical_ntk": empirical,
            "analytic_ntk": analytic,
            "difference": difference,
        },
        checks=[check],
        highlights=[("relative kernel error at init", f"{relative:.4f} (width {width})")],
    )
