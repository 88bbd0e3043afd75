"""Section 6, tangent features: the gradient feature map of a one-hidden-layer sigmoid network, over x."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .._base import Check, SectionResult
from .._context import Context
from .._plot import COLORS, new_figure, save_figure

TITLE = "6. Tangent features of a sigmoid network"
BUILT_IN_DATA = "a sigmoid network of scalar inputs on 241 points of [-3, 3]"


class _SigmoidNetwork(nn.Module):
    """f(x) = a + sum_j b_j sigmoid(c_j x + d_j) for scalar inputs x (shape (n, 1)) and one output."""

    def __init__(self, units: int, seed: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)

        def draw(scale: float) -> nn.Parameter:
            return nn.Parameter((scale * torch.randn(units, generator=generator, dtype=dtype)).to(device))

        self.a = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))
        self.b = draw(1.0)
        self.c = draw(2.0)  # slopes: sigmoids of different steepness and direction over x in [-3, 3]
        self.d = draw(2.0)  # offsets: their centres -d_j / c_j spread over the plotted range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a + torch.sigmoid(x * self.c + self.d) @ self.b[:, None]


def _autograd_features(model: _SigmoidNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-input gradients df(x)/d(theta), one backward pass per input: (n, size of each parameter)."""
    rows: dict[str, list[torch.Tensor]] = {name: [] for name, _ in model.named_parameters()}
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        model(x[i : i + 1]).sum().backward()
        for name, parameter in model.named_parameters():
            rows[name].append(parameter.grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return {name: torch.stack(values) for name, values in rows.items()}


def run(ctx: Context, figures: Path) -> SectionResult:
    units = ctx.config["features"]["units"]
    model = _SigmoidNetwork(units, ctx.seed, ctx.dtype, ctx.device)
    x = torch.linspace(-3.0, 3.0, 241, dtype=ctx.dtype, device=ctx.device)[:, None]
    with torch.no_grad():
        pre = x * model.c + model.d  # (n, units)
        sig = torch.sigmoid(pre)
        bell = sig * (1 - sig)  # sigmoid'(u) = sigmoid(u) (1 - sigmoid(u))
        closed = {
            "a": torch.ones_like(x),
            "b": sig,
            "c": model.b * bell * x,
            "d": model.b * bell,
        }
    measured = _autograd_features(model, x)
    error = max(float((measured[k] - closed[k]).abs().max()) for k in closed)
    # the NTK is the inner product of these features; compare with ntkit's empirical NTK as a second route
    features = torch.cat([closed[k] for k in ("a", "b", "c", "d")], dim=1)
    kernel_from_features = features @ features.T
    try:
        from ...empirical import empirical_ntk

        kernel = empirical_ntk(model, x, outputs="mean")
        kernel_error = float((kernel - kernel_from_features).abs().max() / kernel_from_features.abs().max())
    except ImportError:  # pragma: no cover - only while ntkit.empirical is unavailable
        kernel_error = float("nan")

    figure, axes = new_figure(2, 2, width=10.0, row_height=3.5)
    grid = x[:, 0].cpu()
    panels = (
        ("a", "df/da = 1 (the constant)"),
        ("b", "df/db_j = sigmoid(c_j x + d_j)"),
        ("c", "df/dc_j = b_j sigmoid'(c_j x + d_j) x"),
        ("d", "df/dd_j = b_j sigmoid'(c_j x + d_j)"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = closed[key].cpu()
        for j in range(values.shape[1]):
            label = "a" if key == "a" else f"j = {j + 1}"
            ax.plot(grid, values[:, j], color=COLORS[j % len(COLORS)], lw=1.8, label=label)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.axhline(0.0, color="grey", lw=0.6)
    # one legend for the three panels of units, below the figure: the units are drawn at random, so any place
    # inside a panel may be where their curves run
    handles, labels = axes[1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    save_figure(figure, figures, "features")

    caption = (
        "The NTK of f(x) = a + sum_j b_j sigmoid(c_j x + d_j) is the inner product of its gradient features "
        f"df/dtheta: the constant (from a), {units} sigmoids (from b_j), {units} bell-shaped b_j "
        "sigmoid'(c_j x + d_j) bumps (from d_j), and the same bumps times x (from c_j). A network trained "
        "in the lazy regime fits a linear combination of exactly these functions. Measured: the features "
        f"from autograd match the closed forms to {error:.2g}, and their inner products match ntkit's "
        f"empirical NTK to {kernel_error:.2g} (relative)."
    )
    tolerance = 1e3 * torch.finfo(ctx.dtype).eps
    checks = [
        Check(
            "tangent features",
            "autograd gradients equal the closed-form features; their Gram matrix is the empirical NTK",
            f"max feature error {error:.2g}, kernel error {kernel_error:.2g}",
            error < tolerance and (kernel_error != kernel_error or kernel_error < tolerance),
            threshold=f"both errors < 1000 machine epsilons of {str(ctx.dtype).removeprefix('torch.')} = "
            f"{tolerance:.2g}",
            judged_at=f"the network at initialisation, on {x.shape[0]} points of [-3, 3]",
        )
    ]
    metrics = {
        "x": grid,
        "parameters": {name: p.detach() for name, p in model.named_parameters()},
        "features": closed,
        "max_feature_error_autograd_vs_closed_form": error,
        "max_kernel_error_empirical_vs_features": kernel_error,
    }
    highlights = [("tangent features vs autograd / empirical NTK", f"{error:.2g} / {kernel_error:.2g}")]
    return SectionResult("features", TITLE, caption, metrics, checks, highlights)
