"""Section 4, labels: true against randomly permuted labels, their alignment, training speed and bound."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator

from ..._loss import squared_loss
from ...analysis import generalization_bound, label_alignment, spectrum
from .._base import Check, SectionResult, log_spaced_indices
from .._context import Context
from .._plot import COLORS, new_figure, save_figure

TITLE = "4. True labels against random labels"


def run(ctx: Context, figures: Path) -> SectionResult:
    spec = spectrum(ctx.kernel_train)
    diag_reg = ctx.config["labels"]["diag_reg"]
    labels = {"true labels": ctx.data.y_train, "random labels": ctx.random_labels}
    alignment = {name: label_alignment(spec, y) for name, y in labels.items()}
    bounds = {name: generalization_bound(spec, y, diag_reg=diag_reg) for name, y in labels.items()}
    runs = {
        "true labels": ctx.real_run,
        "random labels": ctx.run(ctx.initial_network, ctx.random_labels, description="random labels"),
    }
    keep = log_spaced_indices(ctx.real_run.steps.shape[0], ctx.config["training"]["record"])
    steps = ctx.real_run.steps[keep].to(torch.float64)
    real_loss = {name: run.loss[keep] for name, run in runs.items()}
    predicted_loss = {}
    for name, y in labels.items():
        predicted_train, _ = ctx.closed_form(y, steps.to(ctx.device))
        predicted_loss[name] = squared_loss(predicted_train, y, "mean")

    # time to reach a tenth of the initial loss: the "speed" of training
    def steps_to_tenth(loss: torch.Tensor) -> float:
        below = (loss <= 0.1 * loss[0]).nonzero()
        return float(steps[int(below[0, 0])]) if below.numel() else float("nan")

    speed = {name: steps_to_tenth(loss) for name, loss in real_loss.items()}

    def described(value: float) -> str:
        return f"{value:.0f}" if value == value else f"not reached in {ctx.steps} steps"

    figure, axes = new_figure(1, 3, width=11.5, row_height=3.9)
    ax = axes[0]
    n = spec.eigenvalues.shape[0]
    for colour, (name, result) in zip(COLORS, alignment.items(), strict=False):
        ax.plot(range(1, n + 1), result.cumulative.cpu(), "o-", ms=3, color=colour, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, n + 0.5)  # from 1 direction
    ax.set_xlabel("number of top eigen-directions")
    ax.set_ylabel("share of ||y||^2")
    ax.set_ylim(0, 1.02)
    ax.set_title("labels on the top eigen-directions")
    ax.legend(loc="lower right")
    ax = axes[1]
    for colour, name in zip(COLORS, labels, strict=False):
        ax.plot(steps, real_loss[name].cpu(), "-", color=colour, lw=1.8, label=f"{name}: network")
        ax.plot(steps, predicted_loss[name].cpu(), ":", color=colour, lw=2.0, label=f"{name}: closed form")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, float(steps[-1]))
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("training loss")
    ax.set_title("training speed")
    ax.legend(loc="lower left")
    ax = axes[2]
    names = list(labels)
    values = [bounds[name].bound for name in names]
    bars = ax.bar(names, values, color=COLORS[: len(names)])
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    ax.set_ylabel("sqrt(2 y^T T^-1 y tr T) / n")
    ax.set_title("bound (Arora et al. 2019)")
    ax.grid(False, axis="x")
    save_figure(figure, figures, "labels")

    true, rand = "true labels", "random labels"
    top = min(5, n)
    ratio = bounds[rand].bound / bounds[true].bound
    caption = (
        "Theory (Arora et al. 2019): labels that lie on the top eigen-directions of the NTK are learned "
        "fast and have a small complexity y^T T^-1 y, hence a small generalization bound sqrt(2 y^T T^-1 y "
        "tr T) / n; random labels spread over all directions, train slower and have a larger bound. "
        "Measured with the labels randomly permuted (same values, same norm): share of ||y||^2 on the top "
        f"{top} directions {alignment[true].top_share(top):.2f} (true) against "
        f"{alignment[rand].top_share(top):.2f} (random); kernel-target alignment "
        f"{alignment[true].kernel_target_alignment:.3f} against "
        f"{alignment[rand].kernel_target_alignment:.3f}; steps to a tenth of the initial loss "
        f"{described(speed[true])} against {described(speed[rand])}; bound {bounds[true].bound:.3g} against "
        f"{bounds[rand].bound:.3g} ({ratio:.2f} times larger)."
    )
    checks = [
        Check(
            "random labels: larger bound",
            "random labels have a larger generalization bound than true labels",
            f"bound {bounds[true].bound:.3g} (true) vs {bounds[rand].bound:.3g} (random)",
            bounds[rand].bound > bounds[true].bound,
            threshold="bound (random labels) > bound (true labels)",
            judged_at=f"the analytic NTK of the {n} training inputs (no training involved)",
        ),
        Check(
            "random labels: slower training",
            "random labels lose less of their training loss in the same number of steps",
            f"final loss / initial loss {float(real_loss[true][-1] / real_loss[true][0]):.3g} (true) vs "
            f"{float(real_loss[rand][-1] / real_loss[rand][0]):.3g} (random)",
            float(real_loss[rand][-1] / real_loss[rand][0]) > float(real_loss[true][-1] / real_loss[true][0]),
            threshold="final / initial training loss larger for random labels",
            judged_at=f"after all {ctx.steps} steps of the network",
        ),
    ]
    metrics = {
        "eigenvalues": spec.eigenvalues,
        "random_permutation_seed": ctx.seed + 1,
        "alignment_cumulative": {k: v.cumulative for k, v in alignment.items()},
        "alignment_shares": {k: v.shares for k, v in alignment.items()},
        "kernel_target_alignment": {k: v.kernel_target_alignment for k, v in alignment.items()},
        "complexity": {k: v.as_dict() for k, v in bounds.items()},
        "bound": {k: v.bound for k, v in bounds.items()},
        "bound_ratio_random_over_true": ratio,
        "steps": steps,
        "loss_network": real_loss,
        "loss_closed_form": predicted_loss,
        "steps_to_tenth_of_initial_loss": speed,
    }
    highlights = [
        (
            "generalization bound, true / random labels",
            f"{bounds[true].bound:.3g} / {bounds[rand].bound:.3g}",
        ),
        (
            "kernel-target alignment, true / random",
            f"{alignment[true].kernel_target_alignment:.3f} / {alignment[rand].kernel_target_alignment:.3f}",
        ),
    ]
    return SectionResult("labels", TITLE, caption, metrics, checks, highlights)
