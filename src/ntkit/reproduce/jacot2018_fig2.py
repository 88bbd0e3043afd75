"""jacot2018-fig2: trained networks' functions against the infinite-width Gaussian at t = infinity.

Jacot, Gabriel and Hongler (2018), figure 2: networks of widths 50 and 1000 trained for 1000 steps on four
points of the unit circle, f(cos g, sin g), beside the 10th, 50th and 90th percentiles of the distribution the
theory gives for infinitely wide networks trained to convergence. That distribution is Gaussian (section 5:
f_0 is a Gaussian process with the NNGP kernel and training is linear in f_0 with the NTK), with the mean and
covariance of `ntkit.predict.gradient_descent_mse_ensemble` at t = inf (Lee et al. 2019, eqs. 13-16).
"""

from __future__ import annotations

import math

import torch

from .._artifacts import COLORS, new_figure, save_figure
from ..dynamics import train
from ..layers import ReLU, mlp
from ..predict import gradient_descent_mse_ensemble
from ._base import Check, Comparison, Outcome, Run, within
from ._common import TRAIN_ANGLES, TRAIN_TARGETS, angle_grid, circle, circle_task, rms

NAME = "jacot2018-fig2"
TITLE = "Jacot et al. 2018, figure 2: trained networks against the infinite-width Gaussian at convergence"
SOURCE = (
    "A. Jacot, F. Gabriel, C. Hongler, Neural Tangent Kernel: Convergence and Generalization in Neural "
    "Networks, NeurIPS 2018, figure 2"
)
CHECKS = "wide networks interpolate, and their mean and spread match the limiting Gaussian's (10/50/90 %)"

Z90 = 1.2815515655446004  # the 90th percentile of N(0, 1)


def settings(quick: bool) -> dict:
    if quick:
        return {"depth": 4, "b_std": 0.1, "widths": [50, 256], "seeds": 10, "steps": 500, "learning_rate": 1.0,
                "angles": 61, "plotted": 8}  # fmt: skip
    return {"depth": 4, "b_std": 0.1, "widths": [50, 1000], "seeds": 20, "steps": 1000, "learning_rate": 1.0,
            "angles": 181, "plotted": 10}  # fmt: skip


def run(run: Run) -> Outcome:
    s = run.settings
    device = run.device
    angles = angle_grid(s["angles"], torch.float64, device)
    x = circle(angles)
    x_train, y_train = circle_task(torch.float64, device)

    def arch(width: int):
        return mlp(s["depth"], width, activation=ReLU(), b_std=s["b_std"])

    ensemble = gradient_descent_mse_ensemble(arch(1), x_train, y_train, learning_rate=s["learning_rate"])
    limit = ensemble(None, x, get="ntk", compute_cov=True).ntk
    mean = limit.mean[:, 0]
    sd = limit.covariance.diagonal().clamp_min(0).sqrt()

    def network(width: int, seed: int) -> dict:
        model = arch(width).build(2, seed=seed, dtype=torch.float32, device=device)
        result = train(
            model,
            x_train.float(),
            y_train.float(),
            learning_rate=s["learning_rate"],
            steps=s["steps"],
            x_test=x.float(),
            record_every=s["steps"],
            progress=False,
        )
        return {
            "function": result.test_outputs[-1][:, 0],
            "train_outputs": result.train_outputs[-1][:, 0],
            "loss": [float(result.loss[0]), float(result.loss[-1])],
        }

    widths, seeds = s["widths"], s["seeds"]
    rows = run.per_width(widths, seeds, network)
    functions = {w: run.tensor([r["function"] for r in rows[w]]) for w in widths}
    fitted = {w: run.tensor([r["train_outputs"] for r in rows[w]]) for w in widths}
    scale = rms(y_train)
    fit_error = {w: float((fitted[w] - y_train[:, 0]).abs().max()) / scale for w in widths}
    mean_gap = {w: rms(functions[w].mean(dim=0) - mean) for w in widths}
    standard_error = rms(sd) / math.sqrt(seeds)
    spread_ratio = {w: rms(functions[w].std(dim=0)) / rms(sd) for w in widths}
    low, high = mean - Z90 * sd, mean + Z90 * sd
    informative = sd > 0.05 * float(sd.max())  # away from the training points, where the band has width
    inside = {
        w: float(((functions[w] >= low) & (functions[w] <= high))[:, informative].to(torch.float64).mean())
        for w in widths
    }

    figure, axes = new_figure(1, len(widths), width=11.5, row_height=4.2)
    g = angles.cpu()
    x_angles = torch.tensor(TRAIN_ANGLES)
    for ax, w in zip(axes, widths, strict=True):
        ax.fill_between(
            g, low.cpu(), high.cpu(), color="grey", alpha=0.25, lw=0, label="10th-90th percentile"
        )
        ax.plot(g, mean.cpu(), "-", color="black", lw=1.8, label="50th percentile (t = inf)")
        ax.plot(g, low.cpu(), "--", color="black", lw=0.9)
        ax.plot(g, high.cpu(), "--", color="black", lw=0.9)
        values = functions[w].cpu()
        for i in range(min(s["plotted"], seeds)):
            ax.plot(
                g,
                values[i],
                "-",
                color=COLORS[0],
                lw=0.8,
                alpha=0.7,
                label="trained networks" if i == 0 else None,
            )
        ax.plot(x_angles, TRAIN_TARGETS, "o", color=COLORS[1], ms=7, zorder=5, label="training points")
        ax.set_xlabel("gamma (x = (cos gamma, sin gamma))")
        ax.set_ylabel("f(x)")
        ax.set_title(f"width {w}, {s['steps']} steps")
        ax.legend(loc="lower left", fontsize=8)
    save_figure(figure, run.figures, "functions")

    wide, narrow = widths[-1], widths[0]
    checks = [
        Check(
            "networks interpolate",
            "after training every network fits the four targets (largest error < 5% of RMS(y)), as the limit does",
            "; ".join(f"width {w}: {fit_error[w]:.2e}" for w in widths),
            all(fit_error[w] < 0.05 for w in widths),
        ),
        Check(
            "mean on the limit's median",
            f"at width {wide} the mean of the {seeds} networks is the Gaussian's mean up to sampling error (RMS "
            "gap <= 3 RMS(sd) / sqrt(seeds))",
            f"RMS gap {mean_gap[wide]:.4f}, bound {3 * standard_error:.4f}",
            mean_gap[wide] <= 3 * standard_error,
        ),
        Check(
            "spread of the limit",
            f"at width {wide} the spread over networks is the Gaussian's (RMS std / RMS sd in [0.6, 1.5]: a "
            f"standard deviation from {seeds} samples errs by about 1/sqrt(2 (seeds - 1)), so this is about 2-3 sigma)",
            f"ratio {spread_ratio[wide]:.3f}",
            within(spread_ratio[wide], 0.6, 1.5),
        ),
    ]
    comparisons = [
        Comparison(
            "widths", "50 and 1000", " and ".join(map(str, widths)), "four training points, 1000 steps"
        ),
        Comparison(
            "networks inside the 10-90% band",
            "most, at both widths (read from the figure)",
            "; ".join(f"width {w}: {100 * inside[w]:.0f}% of points" for w in widths),
            "a Gaussian puts 80% there",
        ),
        Comparison(
            "spread against the limit's",
            "the same at width 1000 (read from the figure)",
            "; ".join(f"width {w}: {spread_ratio[w]:.2f}" for w in widths),
            "RMS std over networks / RMS sd",
        ),
    ]
    summary = (
        f"Depth-{s['depth']} ReLU networks (NTK parametrization, b_std = {s['b_std']}, float32), {seeds} per "
        f"width, trained by full-batch gradient descent (learning rate {s['learning_rate']}, {s['steps']} steps, "
        f"mean squared loss) on four points of the unit circle (angles {list(TRAIN_ANGLES)}, targets "
        f"{list(TRAIN_TARGETS)}; the paper does not list its points). The band is the Gaussian of infinitely "
        f"wide networks trained to convergence. At width {wide}: spread ratio {spread_ratio[wide]:.2f}, "
        f"{100 * inside[wide]:.0f}% of the networks' values inside the 10-90% band (80% for the Gaussian); at "
        f"width {narrow}: {spread_ratio[narrow]:.2f} and {100 * inside[narrow]:.0f}%."
    )
    metrics = {
        "angles": angles,
        "limit_mean": mean,
        "limit_sd": sd,
        "functions": {str(w): functions[w] for w in widths},
        "fit_error_relative": {str(w): fit_error[w] for w in widths},
        "mean_gap_rms": {str(w): mean_gap[w] for w in widths},
        "standard_error_rms": standard_error,
        "spread_ratio": {str(w): spread_ratio[w] for w in widths},
        "inside_10_90": {str(w): inside[w] for w in widths},
        "loss_initial_final": {str(w): [r["loss"] for r in rows[w]] for w in widths},
    }
    figures = {
        "functions": f"f(cos g, sin g) of {min(s['plotted'], seeds)} trained networks per width (blue) against the "
        "10th, 50th and 90th percentiles of the infinite-width Gaussian at t = infinity (black, grey band); "
        "orange: the training points."
    }
    return Outcome(summary, figures, metrics, checks, comparisons)
