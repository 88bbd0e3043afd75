"""Section 5, width: the kernel concentrates and freezes as the network widens; training follows theory."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...analysis import fit_power_law, kernel_drift, width_study
from .._base import Check, SectionResult
from .._context import Context, diverged
from .._plot import COLORS, new_figure, save_figure

TITLE = "5. Width: the kernel concentrates and freezes"


def _loglog(ax, widths, mean, std, slope, intercept, colour, label) -> None:
    if any(s > 0 for s in std):
        ax.errorbar(widths, mean, yerr=std, fmt="o", color=colour, capsize=3, label=label)
    else:  # one network per width: no spread to show (zero-length bars would look like measured ones)
        ax.plot(widths, mean, "o", color=colour, label=label)
    if slope == slope:  # not NaN
        fitted = [math.exp(intercept) * w**slope for w in widths]
        ax.plot(widths, fitted, "-", color=colour, lw=1.2, label=f"fit: slope {slope:.2f}")
    reference = [mean[0] * (w / widths[0]) ** -0.5 for w in widths]
    ax.plot(widths, reference, ":", color="grey", lw=1.2, label="slope -1/2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.legend(loc="upper right")  # the errors fall with width: the upper right is empty


def run(ctx: Context, figures: Path) -> SectionResult:
    settings = ctx.config["width"]
    data = ctx.data
    study = width_study(ctx.arch, data.x_train, settings["widths"], settings["seeds"], progress=ctx.progress)
    drift_steps = settings["drift_steps"]
    try:
        drift = kernel_drift(
            ctx.arch,
            data.x_train,
            data.y_train,
            settings["drift_widths"],
            seeds=[ctx.seed],
            learning_rate=ctx.learning_rate,
            steps=drift_steps,
            x_test=ctx.eval_inputs,
            record_every=drift_steps,
            progress=ctx.progress,
        )
    except ValueError as err:  # a narrow network's kernel is further from the analytic one the rate is set by
        raise diverged("training.learning_rate", ctx.learning_rate, err) from None
    scale = float(data.y_train.pow(2).mean().sqrt())
    final = torch.tensor([float(drift_steps)], dtype=ctx.dtype, device=ctx.device)
    gaps_train, gaps_test = [], []
    for row in drift.runs:
        result = row[0]
        predicted_train, predicted_eval = ctx.closed_form(
            data.y_train, final, (result.train_outputs[0], result.test_outputs[0])
        )
        gaps_train.append(float((result.train_outputs[-1] - predicted_train[0]).pow(2).mean().sqrt()) / scale)
        test = ctx.test_slice
        difference = result.test_outputs[-1][test] - predicted_eval[0][test]
        gaps_test.append(float(difference.pow(2).mean().sqrt()) / scale)
    gap_slope, gap_intercept = fit_power_law(drift.widths, gaps_train)

    figure, axes = new_figure(1, 3, width=11.5, row_height=3.9)
    _loglog(
        axes[0],
        study.widths,
        study.mean.tolist(),
        study.std.tolist(),
        study.slope,
        study.intercept,
        COLORS[0],
        f"mean of {len(study.seeds)} seeds",
    )
    axes[0].set_ylabel("||T_m - T_inf||_F / ||T_inf||_F")
    axes[0].set_title("kernel error at initialisation")
    _loglog(
        axes[1],
        drift.widths,
        drift.mean.tolist(),
        [0.0] * len(drift.widths),
        drift.slope,
        drift.intercept,
        COLORS[1],
        "network",
    )
    axes[1].set_ylabel("||T_end - T_0||_F / ||T_0||_F")
    axes[1].set_title(f"kernel drift over {drift_steps} steps")
    _loglog(
        axes[2],
        drift.widths,
        gaps_train,
        [0.0] * len(drift.widths),
        gap_slope,
        gap_intercept,
        COLORS[2],
        "train points",
    )
    if data.test_given:  # without test inputs the evaluation points are the training inputs again
        axes[2].plot(drift.widths, gaps_test, "s", color=COLORS[3], label="test points")
        axes[2].legend(loc="upper right")  # the errors fall with width: the upper right is empty
    axes[2].set_ylabel("RMS(network - closed form) / RMS(y)")
    axes[2].set_title("trained network vs closed form")
    save_figure(figure, figures, "width")

    widest = drift.widths[-1]
    caption = (
        "Theory (Jacot et al. 2018; Lee et al. 2019): in the NTK parametrization the empirical NTK "
        "converges to the analytic one with fluctuations of order width^-1/2, and it moves during training "
        "by order width^-1/2, so wide networks train like their closed-form prediction. Measured on the "
        f"{data.x_train.shape[0]} training points: kernel error slope {study.slope:.2f} (theory -0.5) from "
        f"{study.mean[0]:.3g} at width {study.widths[0]} to {study.mean[-1]:.3g} at width "
        f"{study.widths[-1]}; kernel drift over {drift_steps} steps slope {drift.slope:.2f}, from "
        f"{drift.mean[0]:.3g} to {drift.mean[-1]:.3g}; gap between trained network and closed form "
        f"{gaps_train[0]:.3g} at width {drift.widths[0]} and {gaps_train[-1]:.3g} at width {widest} (train "
        f"points). Error bars (left): plus and minus one standard deviation of the kernel error over the "
        f"{len(study.seeds)} networks drawn at each width, around their mean; the drift and the gap (middle, "
        f"right) are from one network per width (seed {ctx.seed}), so they have none."
    )
    checks = [
        Check(
            "kernel error slope",
            "relative kernel error ~ width^-1/2 (log-log slope -0.5)",
            f"fitted slope {study.slope:.3f}",
            abs(study.slope + 0.5) < 0.2,
            threshold="|slope + 0.5| < 0.2",
            judged_at=f"initialisation, widths {study.widths[0]} to {study.widths[-1]}, {len(study.seeds)} "
            "networks each",
        ),
        Check(
            "kernel drift shrinks",
            "the NTK moves less during training as the width grows",
            f"drift {drift.mean[0]:.3g} at width {drift.widths[0]}, {drift.mean[-1]:.3g} at {widest} (slope "
            f"{drift.slope:.2f})",
            float(drift.mean[-1]) < float(drift.mean[0]) and drift.slope < 0,
            threshold="drift at the widest width < at the narrowest, and fitted slope < 0",
            judged_at=f"after {drift_steps} steps, one network per width",
        ),
        Check(
            "wide network follows the theory",
            "at the widest width the trained network is close to the closed-form prediction",
            f"RMS gap {gaps_train[-1]:.3g} of RMS(y) on training points at width {widest}",
            gaps_train[-1] < 0.1 and gaps_train[-1] <= gaps_train[0],
            threshold="RMS gap < 0.1 RMS(y) at the widest width, and no larger than at the narrowest",
            judged_at=f"after {drift_steps} steps, on the training points",
        ),
    ]
    metrics = {
        "widths": study.widths,
        "seeds": study.seeds,
        "kernel_error": study.errors,
        "kernel_error_mean": study.mean,
        "kernel_error_std": study.std,
        "kernel_error_slope": study.slope,
        "kernel_error_intercept": study.intercept,
        "drift_widths": drift.widths,
        "drift_steps": drift_steps,
        "drift": drift.drift[:, 0],
        "drift_slope": drift.slope,
        "learning_rate": ctx.learning_rate,
        "gap_train": gaps_train,
        "gap_test": gaps_test,
        "gap_slope": gap_slope,
        "gap_at_widest": gaps_train[-1],
    }
    highlights = [
        ("kernel error slope (theory -0.5)", f"{study.slope:.3f}"),
        ("kernel drift slope", f"{drift.slope:.3f}"),
        (f"network vs closed form at width {widest}", f"{gaps_train[-1]:.3g} of RMS(y)"),
    ]
    return SectionResult("width", TITLE, caption, metrics, checks, highlights)
