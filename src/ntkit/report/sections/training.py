"""Section 2, training predicted and real: the network, its linearization and the closed form."""

from __future__ import annotations

from pathlib import Path

import torch

from ..._loss import squared_loss
from .._base import Check, SectionResult, log_spaced_indices
from .._context import Context
from .._plot import COLORS, new_figure, save_figure

TITLE = "2. Training, predicted and real"

_POINTS = 4  # training points whose outputs are followed over time
_SNAPSHOTS = 4  # times at which the learned function is drawn
GAP = 0.1  # the check: network within 10% of RMS(y) of the closed form while training fits the data


def _rms(a: torch.Tensor) -> torch.Tensor:
    """Root mean square over every axis but the first (time)."""
    return a.pow(2).reshape(a.shape[0], -1).mean(dim=1).sqrt()


def _as_3d(outputs: torch.Tensor) -> torch.Tensor:
    return outputs if outputs.ndim == 3 else outputs[..., None]


def run(ctx: Context, figures: Path) -> SectionResult:
    data = ctx.data
    real, linear = ctx.real_run, ctx.linear_run
    predicted_train, predicted_eval = ctx.predicted
    keep = log_spaced_indices(real.steps.shape[0], ctx.config["training"]["record"])
    steps = real.steps[keep].to(torch.float64)
    y = data.y_train

    train_outputs = {
        "network": _as_3d(real.train_outputs)[keep],
        "linearized": _as_3d(linear.train_outputs)[keep],
        "closed form": _as_3d(predicted_train)[keep],
    }
    eval_outputs = {
        "network": _as_3d(real.test_outputs)[keep],
        "linearized": _as_3d(linear.test_outputs)[keep],
        "closed form": _as_3d(predicted_eval)[keep],
    }
    losses = {name: squared_loss(out, y, "mean") for name, out in train_outputs.items()}
    scale = float(y.pow(2).mean().sqrt())
    test = ctx.test_slice
    # the loss on the test points, in the training loss's units 1/(2M) ||f(X*) - y*||^2
    test_losses = (
        {}
        if data.y_test is None
        else {name: squared_loss(out[:, test], data.y_test, "mean") for name, out in eval_outputs.items()}
    )
    gaps = {
        "train: network - closed form": _rms(train_outputs["network"] - train_outputs["closed form"]) / scale
    }
    if data.test_given:  # without test inputs the evaluation points are the training inputs again
        gaps["test: network - closed form"] = (
            _rms(eval_outputs["network"][:, test] - eval_outputs["closed form"][:, test]) / scale
        )
    gaps["train: network - linearized"] = _rms(train_outputs["network"] - train_outputs["linearized"]) / scale
    gaps["train: linearized - closed form"] = (
        _rms(train_outputs["linearized"] - train_outputs["closed form"]) / scale
    )
    followed = torch.linspace(0, y.shape[0] - 1, _POINTS).round().long().tolist()
    styles = {"network": "-", "linearized": "--", "closed form": ":"}

    figure, axes = new_figure(2, 2, width=10.0, row_height=3.9)
    ax = axes[0]
    for colour, index in zip(COLORS, followed, strict=False):
        for name, out in train_outputs.items():
            ax.plot(steps, out[:, index, 0].cpu(), styles[name], color=colour, lw=1.6)
        ax.axhline(float(y[index, 0]), color=colour, lw=0.8, alpha=0.5)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, float(steps[-1]))
    ax.set_xlabel("gradient step")
    ax.set_ylabel("output f(x_i)")
    ax.set_title(f"outputs at {_POINTS} training points" + (" (output 1)" if y.shape[1] > 1 else ""))
    ax.plot([], [], "-", color="grey", label="network")
    ax.plot([], [], "--", color="grey", label="linearized")
    ax.plot([], [], ":", color="grey", label="closed form")
    ax.legend(loc="best")

    ax = axes[1]
    # snapshots at steps 0, S^(1/3), S^(2/3) and S: evenly spread in log time
    targets = [0.0] + [float(steps[-1]) ** (k / (_SNAPSHOTS - 1)) for k in range(1, _SNAPSHOTS)]
    snapshot_rows = sorted({int((steps - target).abs().argmin()) for target in targets})
    snapshots = {}
    if ctx.grid_slice is not None:
        grid = data.grid[:, 0].cpu()
        if data.y_test is not None and ctx.config["data"]["source"] == "sine":
            ax.plot(
                grid, torch.sin(2 * torch.pi * grid), color="grey", lw=0.8, alpha=0.6, label="sin(2 pi x)"
            )
        for colour, row in zip(COLORS, snapshot_rows, strict=False):
            network = eval_outputs["network"][row, ctx.grid_slice, 0].cpu()
            closed = eval_outputs["closed form"][row, ctx.grid_slice, 0].cpu()
            ax.plot(grid, network, "-", color=colour, lw=1.6, label=f"step {int(steps[row])}")
            ax.plot(grid, closed, ":", color=colour, lw=2.0)
            snapshots[str(int(steps[row]))] = {"network": network, "closed_form": closed}
        ax.plot(data.x_train[:, 0].cpu(), y[:, 0].cpu(), "o", color="black", ms=4, label="training data")
        if (
            data.y_test is not None and ctx.config["data"]["source"] == "files"
        ):  # (the sine's lie on the curve)
            ax.plot(
                data.x_test[:, 0].cpu(),
                data.y_test[:, 0].cpu(),
                "o",
                mfc="none",
                mec="black",
                ms=4,
                label="test data",
            )
        ax.set_xlabel("x")
        ax.set_ylabel("f(x)")
        ax.set_title("learned function at 4 times")
        ax.plot([], [], "-", color="grey", label="network")
        ax.plot([], [], ":", color="grey", lw=2.0, label="closed form")
        ax.legend(loc="best", ncols=2, fontsize=8)
    else:
        network = eval_outputs["network"][-1, test].reshape(-1).cpu()
        closed = eval_outputs["closed form"][-1, test].reshape(-1).cpu()
        ax.plot(closed, network, ".", ms=3)
        low, high = (
            float(torch.minimum(closed.min(), network.min())),
            float(torch.maximum(closed.max(), network.max())),
        )
        ax.plot([low, high], [low, high], color="grey", lw=0.8)
        ax.set_xlabel("closed form output")
        ax.set_ylabel("network output")
        points = "test" if data.test_given else "training (no test points given)"
        ax.set_title(f"{points} outputs at step {int(steps[-1])}", fontsize=11)
        snapshots["final"] = {"network": network, "closed_form": closed}

    ax = axes[2]
    # colour: which points; line style: which of the three (as in the first panel)
    for name, loss in losses.items():
        ax.plot(steps, loss.cpu(), styles[name], color=COLORS[0], lw=1.8)
    for name, loss in test_losses.items():
        ax.plot(steps, loss.cpu(), styles[name], color=COLORS[1], lw=1.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, float(steps[-1]))
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("loss 1/(2N) ||f - y||^2")
    ax.plot([], [], "-", color=COLORS[0], label="training points")
    if test_losses:
        ax.plot([], [], "-", color=COLORS[1], label=f"{data.y_test.shape[0]} test points")
    for name, style in styles.items():
        ax.plot([], [], style, color="grey", label=name)
    ax.set_title("loss on training" + (" and test points" if test_losses else " points"))
    ax.legend(loc="best", ncols=2 if test_losses else 1, fontsize=8)

    ax = axes[3]
    for name, gap in gaps.items():
        # from step 1: at step 0 all three start from the same outputs and the gap is round-off
        ax.plot(steps[1:], gap[1:].cpu(), lw=1.6, label=name)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(1, float(steps[-1]))
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("RMS difference / RMS(y)")
    ax.set_title("how far apart the three are")
    ax.legend(loc="best")
    save_figure(figure, figures, "training")

    width = ctx.config["model"]["width"]
    final_gap = float(gaps["train: network - closed form"][-1])
    final_test_gap = float(gaps["test: network - closed form"][-1]) if data.test_given else None
    linear_gap = float(gaps["train: linearized - closed form"][-1])
    # The closed form should track the network while it learns: take the step where the closed-form loss has
    # fallen tenfold (the top directions are learned) and compare there. Much later, directions of small
    # eigenvalue are learned, whose rates a finite network gets wrong by O(width^-1/2) relative to lambda_max,
    # and the gap grows; the caption and metrics state it at the end of training too.
    closed_loss = losses["closed form"]
    reached = (closed_loss <= 0.1 * closed_loss[0]).nonzero()
    tenfold_row = int(reached[0, 0]) if reached.numel() else len(keep) - 1
    tenfold_step = int(steps[tenfold_row])
    tenfold_gap = float(gaps["train: network - closed form"][tenfold_row])
    after = f"{final_gap:.3g} (training points)"
    if final_test_gap is not None:
        after += f" and {final_test_gap:.3g} (test points)"
    test_words = ""
    if test_losses:
        test_words = (
            f" Test loss after training on the {data.y_test.shape[0]} test points (orange in the third panel): "
            + ", ".join(f"{name} {float(loss[-1]):.3g}" for name, loss in test_losses.items())
            + "."
        )
    elif not data.test_given:
        test_words = " No test points were given (data.x_test), so no test error is shown."
    else:
        test_words = " The test points have no targets (data.y_test), so no test error is shown."
    caption = (
        "Theory (Lee et al. 2019): a wide network trained by gradient descent on squared loss follows its "
        "linearization, whose outputs the NTK gives in closed form: f_t = y + (I - eta T / N)^t (f_0 - y) "
        f"on the training points. Measured at width {width}, learning rate {ctx.learning_rate:.4g}, "
        f"{ctx.steps} steps: when the predicted loss has fallen tenfold (step {tenfold_step}), network and "
        f"closed form (analytic NTK) differ by {tenfold_gap:.3g} of RMS(y) on the training points; after all "
        f"steps by {after}, as the slow directions, whose rates a finite network only approximates, are "
        "learned. The linearized network (empirical NTK at initialisation) ends "
        f"{linear_gap:.3g} from the closed form. Final training loss: network {float(losses['network'][-1]):.3g}, "
        f"closed form {float(losses['closed form'][-1]):.3g}.{test_words} Thin horizontal lines in the first "
        "panel: the targets y_i."
    )
    metrics = {
        "width": width,
        "learning_rate": ctx.learning_rate,
        "steps": steps,
        "followed_points": followed,
        "x_train": data.x_train,
        "y_train": y,
        "train_outputs_followed": {k: v[:, followed, 0] for k, v in train_outputs.items()},
        "loss": losses,
        "relative_gap": gaps,
        "snapshots": snapshots,
        "grid": data.grid[:, 0] if data.grid is not None else None,
        "final_relative_gap_train": final_gap,
        "final_relative_gap_test": final_test_gap,
        "final_relative_gap_linearized_closed_form": linear_gap,
        "final_loss": {k: float(v[-1]) for k, v in losses.items()},
        "tenfold_loss_step": tenfold_step,
        "relative_gap_train_at_tenfold_loss": tenfold_gap,
    }
    if test_losses:
        metrics["test_loss"] = test_losses
        metrics["final_test_mse"] = {name: 2 * float(loss[-1]) for name, loss in test_losses.items()}
    later = ""
    if tenfold_gap < GAP <= final_gap:
        later = f"no after all {ctx.steps} steps ({final_gap:.3g})"
    checks = [
        Check(
            "training predicted",
            "the network's outputs follow the closed-form NTK prediction while training fits the data",
            f"RMS gap {tenfold_gap:.3g} of RMS(y) (width {width}); {final_gap:.3g} after all {ctx.steps} steps",
            tenfold_gap < GAP,
            threshold=f"RMS(network - closed form) < {GAP:g} RMS(y) on the training points",
            judged_at=f"step {tenfold_step} of {ctx.steps}, when the predicted training loss has fallen tenfold",
            later=later,
        )
    ]
    highlights = [
        (
            "network vs closed form after training",
            f"{final_gap:.3g} of RMS(y) (train)"
            + ("" if final_test_gap is None else f", {final_test_gap:.3g} (test)"),
        ),
        (
            "final training loss, network / closed form",
            f"{float(losses['network'][-1]):.3g} / {float(losses['closed form'][-1]):.3g}",
        ),
    ]
    if test_losses:
        highlights.append(
            (
                f"test loss after training ({data.y_test.shape[0]} points), network / linearized / closed form",
                " / ".join(f"{float(loss[-1]):.3g}" for loss in test_losses.values()),
            )
        )
    return SectionResult("training", TITLE, caption, metrics, checks, highlights)
