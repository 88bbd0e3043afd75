"""Section 3, the spectrum: NTK eigenvalues and training along the eigen-directions, predicted and real."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator

from ...analysis import eigen_convergence, spectrum
from .._base import Check, SectionResult, log_spaced_indices
from .._context import Context
from .._plot import COLORS, new_figure, save_figure

TITLE = "3. The spectrum sets the speed"

_WINDOW = 0.1
RATE_ERROR = 0.25  # the check: fitted rates within 25% of the predicted ones


def run(ctx: Context, figures: Path) -> SectionResult:
    # The network's own kernel at initialisation: the theory says a finite network trains along the
    # eigenvectors of ITS kernel (Lee et al. 2019); the analytic kernel's eigenvectors are a width-dependent
    # rotation away from them, which mixes the directions of close eigenvalues.
    width = ctx.config["model"]["width"]
    spec = spectrum(ctx.empirical_kernel_train)
    analytic = spectrum(ctx.kernel_train)
    real = ctx.real_run
    keep = log_spaced_indices(real.steps.shape[0], ctx.config["training"]["record"])
    times = real.steps[keep].to(torch.float64)
    f0_train, _ = ctx.initial_outputs
    result = eigen_convergence(
        spec,
        ctx.data.y_train,
        f0_train,
        times,
        learning_rate=ctx.learning_rate,
        reduction="mean",
        discrete=True,
        measured=real.train_outputs[keep],
    )
    count = min(ctx.config["spectrum"]["directions"], spec.eigenvalues.shape[0])
    predicted = result.predicted.norm(dim=2)[:, :count]  # (T, count): ||v_i . (u - y)|| over outputs
    measured = result.measured.norm(dim=2)[:, :count]
    # per-step decay of log |r_i|: -log(1 - eta lambda_i / N) for discrete steps (about eta lambda_i / N)
    rates = -torch.log1p(-result.rates[:count])
    # fitted over the first decade of predicted decay: later the network's kernel has moved (by O(width^-1/2)
    # per unit of training) and its residual stalls at the level of those corrections
    fitted = result.fitted_rates("measured", floor=0.0, window=_WINDOW)[:count]

    figure, axes = new_figure(1, 2, width=10.0, row_height=4.0)
    ax = axes[0]
    values = spec.eigenvalues.cpu()
    index = torch.arange(1, values.shape[0] + 1)
    positive = values > 0
    ax.semilogy(
        index[positive], values[positive], "o-", ms=4, lw=1.2, color=COLORS[0], label=f"width {width}"
    )
    limit = analytic.eigenvalues.cpu()
    ax.semilogy(index[limit > 0], limit[limit > 0], "x--", ms=5, lw=1.0, color="grey", label="infinite width")
    for i in range(count):
        ax.semilogy(
            [i + 1], [float(values[i])], "o", ms=10, mfc="none", mew=1.8, color=COLORS[(i + 1) % len(COLORS)]
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, values.shape[0] + 0.5)  # indices start at 1
    ax.set_xlabel("index i")
    ax.set_ylabel("eigenvalue lambda_i")
    ax.set_title("NTK eigenvalues")
    ax.legend(loc="upper right")
    ax = axes[1]
    for i in range(count):
        colour = COLORS[(i + 1) % len(COLORS)]
        ax.plot(times.cpu(), predicted[:, i].cpu(), "-", color=colour, lw=1.6, label=f"i = {i + 1}")
        ax.plot(times.cpu(), measured[:, i].cpu(), "o", color=colour, ms=3.5, alpha=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, float(times[-1]))
    ax.set_yscale("log")
    floor = float(measured[measured > 0].min()) if bool((measured > 0).any()) else 1e-12
    ax.set_ylim(bottom=max(floor * 0.5, 1e-12 * float(predicted.max())))
    ax.set_xlabel("gradient step")
    ax.set_ylabel("|v_i . (f_t(X) - y)|")
    ax.set_title("residual along eigenvector i")
    ax.plot([], [], "-", color="grey", label="theory")
    ax.plot([], [], "o", color="grey", ms=3.5, label="network")
    ax.legend(loc="lower left")
    save_figure(figure, figures, "spectrum")

    pairs = ", ".join(f"{float(p):.3g}/{float(m):.3g}" for p, m in zip(rates, fitted, strict=True))
    ordered = all(float(predicted[-1, i]) <= float(predicted[-1, i + 1]) for i in range(count - 1))
    caption = (
        "Theory (Jacot et al. 2018; Lee et al. 2019; Arora et al. 2019): under gradient descent the "
        "residual along the i-th eigenvector v_i of the network's NTK shrinks by a factor (1 - eta lambda_i "
        "/ N) per step (a log-decay rate of -log(1 - eta lambda_i / N) per step), so directions with large "
        "eigenvalues are learned first and the spectrum sets the speed of training. Measured: the NTK of "
        f"the width-{width} network at initialisation on the {spec.eigenvalues.shape[0]} training points "
        f"(left, with the infinite-width eigenvalues) has effective rank {spec.effective_rank:.1f} and "
        f"condition number {spec.condition_number:.3g}; decay rates per step of the top {count} directions, "
        f"predicted / fitted on the network's run (over the first tenfold decay): {pairs}."
    )
    # a direction whose initial residual is small is swamped by what leaks in from the large ones (the finite
    # network's kernel is not exactly its initial kernel), so only the well-started directions test the rate
    started = predicted[0] >= 0.25 * predicted[0].max()
    finite = torch.isfinite(fitted) & started
    agreement = (
        float(((fitted[finite] - rates[finite]).abs() / rates[finite]).max())
        if bool(finite.any())
        else float("nan")
    )
    checks = [
        Check(
            "eigen-directions",
            "the network's residual decays along v_i by the factor 1 - eta lambda_i / N per step",
            f"largest relative difference of fitted and predicted rates over the top {count} directions "
            f"(those starting with at least a quarter of the largest residual, {int(finite.sum())}): "
            f"{agreement:.3g}",
            bool(agreement < RATE_ERROR),
            threshold=f"|fitted - predicted| / predicted < {RATE_ERROR:g} for each tested direction",
            judged_at="each direction's rate fitted over its first tenfold decay (predicted), on the "
            f"network's {ctx.steps}-step run",
        )
    ]
    metrics = {
        "eigenvalues": spec.eigenvalues,
        "eigenvalues_infinite_width": analytic.eigenvalues,
        "effective_rank": spec.effective_rank,
        "participation_ratio": spec.participation_ratio,
        "condition_number": spec.condition_number,
        "steps": times,
        "predicted_rates": rates,
        "directions_tested": finite,
        "fitted_rates": fitted,
        "max_relative_rate_error": agreement,
        "residual_predicted": predicted,
        "residual_measured": measured,
        "top_directions_learned_in_order": ordered,
    }
    highlights = [
        ("NTK effective rank / condition number", f"{spec.effective_rank:.1f} / {spec.condition_number:.3g}"),
        (f"decay rates of top {count} directions, predicted / fitted", pairs),
    ]
    return SectionResult("spectrum", TITLE, caption, metrics, checks, highlights)
