"""Section 7, a real dataset: scikit-learn's digits, NTK kernel regression against the trained network."""

from __future__ import annotations

from pathlib import Path

from .._base import Check, SectionResult
from .._context import Context, learning_rate_for
from .._plot import COLORS, new_figure, save_figure
from ..data import load_digits_split
from ._classify import accuracy, agreement, draw_outputs_against, train_centred

TITLE = "7. A real dataset: handwritten digits"
BUILT_IN_DATA = "scikit-learn's 8x8 handwritten digits"
AGREEMENT = 0.9  # the check: the network predicts its closed form's class on more than 90% of test images


def run(ctx: Context, figures: Path) -> SectionResult:
    from ...predict import gradient_descent_mse

    settings = ctx.config["digits"]
    digits = load_digits_split(settings["n_train"], settings["n_test"], ctx.seed, ctx.device, ctx.dtype)
    arch = ctx.arch(width=settings["width"], outputs=10, depth=settings["depth"])
    # The kernels, their eigendecomposition and kernel regression run in float64 whatever the network's dtype
    # (docs/report.md): the closed form inverts a 500 x 500 NTK, too ill-conditioned for float32.
    x_train, x_test = digits.x_train.double(), digits.x_test.double()
    kernel = arch.kernel(x_train, get="ntk").ntk
    kernel_test = arch.kernel(x_test, x_train, get="ntk").ntk
    label_entries = digits.y_train.numel()
    learning_rate = learning_rate_for(
        settings["learning_rate"], kernel, label_entries, "digits.learning_rate"
    )
    steps = settings["steps"]
    network = arch.build(digits.x_train.shape[1], seed=ctx.seed, dtype=ctx.dtype, device=ctx.device)
    run_result, network_test = train_centred(
        ctx, network, digits, learning_rate, steps, records=50, key="digits.learning_rate"
    )
    recorded = run_result.t.to(device=ctx.device, dtype=ctx.dtype)
    predictor = gradient_descent_mse(
        kernel, digits.y_train, learning_rate=learning_rate, reduction="mean", discrete=True
    )
    _, closed_test = predictor(recorded, 0.0, None, kernel_test)
    _, regression_test = predictor(
        float("inf"), 0.0, None, kernel_test
    )  # t = inf, f_0 = 0: kernel regression
    # Back to the network's dtype for the comparisons, figures and metrics.
    closed_test, regression_test = closed_test.to(ctx.dtype), regression_test.to(ctx.dtype)

    network_accuracy = [accuracy(out, digits.labels_test) for out in network_test]
    closed_accuracy = [accuracy(out, digits.labels_test) for out in closed_test]
    regression_accuracy = accuracy(regression_test, digits.labels_test)
    agreement_closed = agreement(network_test[-1], closed_test[-1])
    agreement_regression = agreement(network_test[-1], regression_test)
    final_network, final_closed = network_test[-1], closed_test[-1]
    output_gap = float(
        (final_network - final_closed).pow(2).mean().sqrt() / digits.y_test.pow(2).mean().sqrt()
    )

    figure, axes = new_figure(1, 3, width=11.5, row_height=3.9)
    ax = axes[0]
    steps_cpu = recorded.cpu()
    ax.plot(steps_cpu, network_accuracy, "o-", ms=3.5, color=COLORS[0], label="network")
    ax.plot(steps_cpu, closed_accuracy, ":", lw=2.0, color=COLORS[1], label="closed form (NTK)")
    ax.axhline(regression_accuracy, color=COLORS[2], lw=1.2, ls="--", label="kernel regression (t = inf)")
    ax.set_xscale("symlog", linthresh=10.0)
    ax.set_xlim(0, float(steps))  # the axis starts at step 0: symlog's margin would show negative steps
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("gradient step")
    ax.set_ylabel("test accuracy")
    ax.set_title("test accuracy during training")
    # below the axes: inside, every corner has data (the fast rise at the left, the plateau at the top)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    ax = axes[1]
    names = ["network", "closed form\nat same step", "kernel\nregression"]
    values = [network_accuracy[-1], closed_accuracy[-1], regression_accuracy]
    bars = ax.bar(names, values, color=COLORS[:3])
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"agreement network / closed form: {agreement_closed:.3f}", fontsize=11)
    ax.grid(False, axis="x")
    ax = axes[2]
    draw_outputs_against(ax, final_closed, final_network, "closed-form output", "network output")
    ax.set_title(f"all 10 outputs on {settings['n_test']} test images")
    save_figure(figure, figures, "digits")

    caption = (
        "Theory (Jacot et al. 2018; Lee et al. 2019; Arora et al. 2019): a wide network trained on squared "
        "loss makes the predictions of its NTK, so it should agree with the closed form at the same step "
        "and, trained long, approach NTK kernel regression. Measured on scikit-learn's digits "
        f"({settings['n_train']} training and {settings['n_test']} test images, 10 centred one-hot outputs), "
        f"a {settings['depth']}-hidden-layer network of width {settings['width']} (centred: its initial "
        "function subtracted, which keeps its NTK and starts it from f_0 = 0 like kernel regression), "
        f"{steps} steps at learning rate {learning_rate:.3g}: test accuracy network "
        f"{network_accuracy[-1]:.3f}, closed form at the same step {closed_accuracy[-1]:.3f}, kernel "
        f"regression {regression_accuracy:.3f}; the network's predicted class agrees with the closed form on "
        f"{agreement_closed:.1%} of test images and with kernel regression on {agreement_regression:.1%}; "
        f"RMS output difference {output_gap:.3g} of RMS(target)."
    )
    checks = [
        Check(
            "digits: network agrees with its NTK",
            "the trained network predicts the same class as the closed-form NTK prediction",
            f"agreement {agreement_closed:.3f}; accuracy {network_accuracy[-1]:.3f} vs "
            f"{closed_accuracy[-1]:.3f}",
            agreement_closed > AGREEMENT,
            threshold=f"same predicted class on more than {AGREEMENT:.0%} of the {settings['n_test']} test images",
            judged_at=f"after all {steps} steps",
        )
    ]
    metrics = {
        "n_train": settings["n_train"],
        "n_test": settings["n_test"],
        "width": settings["width"],
        "depth": settings["depth"],
        "learning_rate": learning_rate,
        "steps": recorded,
        "test_accuracy_network": network_accuracy,
        "test_accuracy_closed_form": closed_accuracy,
        "test_accuracy_kernel_regression": regression_accuracy,
        "agreement_network_closed_form": agreement_closed,
        "agreement_network_kernel_regression": agreement_regression,
        "relative_output_gap": output_gap,
        "test_outputs_network_final": final_network,
        "test_outputs_closed_form_final": final_closed,
        "test_labels": digits.labels_test,
    }
    highlights = [
        (
            "digits test accuracy: network / closed form / kernel regression",
            f"{network_accuracy[-1]:.3f} / {closed_accuracy[-1]:.3f} / {regression_accuracy:.3f}",
        ),
        ("digits agreement network vs closed form", f"{agreement_closed:.3f}"),
    ]
    return SectionResult("digits", TITLE, caption, metrics, checks, highlights)
