"""arora2019-random-labels: true against random labels, by the fraction of labels randomised.

Arora, Du, Hu, Li and Wang (2019), figures 1 and 2: a two-layer ReLU network (first layer trained, readout
fixed) on a two-class problem whose labels are partly replaced by random ones. The Gram matrix of that network
at infinite width is H^inf_ij = x_i.x_j (pi - arccos(x_i.x_j)) / (2 pi) (unit-norm inputs), which is the NTK of
Serial(Dense(m, b_std=None), ReLU(), Dense(1, b_std=None, trainable=False)) in ntkit's conventions. Their
theorems: training converges along the eigen-directions of H^inf, so labels aligned with its top directions
are fit faster (theorem 4.1), and the population loss is bounded by sqrt(2 y^T (H^inf)^-1 y / n) (theorem 5.1),
which grows as labels are randomised.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._artifacts import COLORS, new_figure, save_figure
from .._loss import squared_loss
from ..analysis import generalization_bound, spectrum
from ..dynamics import train
from ..layers import Dense, ReLU, Serial
from ..predict import gradient_descent_mse
from ._base import Check, Comparison, Outcome, Run

NAME = "arora2019-random-labels"
TITLE = "Arora et al. 2019: true against random labels (complexity y^T H^-1 y, bound, training speed)"
SOURCE = (
    "S. Arora, S. S. Du, W. Hu, Z. Li, R. Wang, Fine-Grained Analysis of Optimization and Generalization for "
    "Overparameterized Two-Layer Neural Networks, ICML 2019, figures 1 and 2 (MNIST there; digits here)"
)
CHECKS = (
    "y^T H^-1 y, the bound, the training loss left and the test error all grow with the fraction randomised"
)


def settings(quick: bool) -> dict:
    if quick:
        return {"classes": [3, 5], "n_train": 120, "n_test": 100, "width": 2000, "steps": 300,
                "fractions": [0.0, 0.25, 0.5, 0.75, 1.0]}  # fmt: skip
    return {"classes": [3, 5], "n_train": 300, "n_test": 60, "width": 10000, "steps": 1000,
            "fractions": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}  # fmt: skip


def _two_classes(classes, n_train, n_test, device):
    """Two digit classes, labels +-1, pixels centred and each image scaled to norm sqrt(64) (x.x'/d = 1)."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    keep = np.isin(labels, classes)
    images, labels = images[keep], labels[keep]
    order = np.random.default_rng(0).permutation(len(labels))[: n_train + n_test]
    images, labels = images[order], labels[order]
    images = images - images[:n_train].mean(axis=0)
    images = images / np.linalg.norm(images, axis=1, keepdims=True) * math.sqrt(images.shape[1])
    y = np.where(labels == classes[0], 1.0, -1.0)
    x = torch.as_tensor(images, dtype=torch.float64, device=device)
    y = torch.as_tensor(y, dtype=torch.float64, device=device)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _rank_correlation(values) -> float:
    """Spearman's rank correlation of ``values`` with their order (1: increasing)."""
    ranks = np.argsort(np.argsort(np.asarray(values)))
    order = np.arange(len(values))
    return float(np.corrcoef(ranks, order)[0, 1])


def run(run: Run) -> Outcome:
    s = run.settings
    device = run.device
    x, y_true, x_test, y_test = _two_classes(s["classes"], s["n_train"], s["n_test"], device)
    n = x.shape[0]
    arch = Serial(Dense(s["width"], b_std=None), ReLU(), Dense(1, b_std=None, trainable=False))
    kernel = arch.kernel(x, get="ntk").ntk  # H^inf
    kernel_test = arch.kernel(x_test, x, get="ntk").ntk
    spec = spectrum(kernel)
    # eta lambda_max / N = 1: every direction decays monotonically, at half the stability limit
    learning_rate = n / float(spec.eigenvalues.max())
    rng = np.random.default_rng(1)
    order, coins = rng.permutation(n), rng.choice([-1.0, 1.0], size=n)

    def labels(fraction: float) -> torch.Tensor:
        y = y_true.clone()
        chosen = order[: round(fraction * n)]  # nested: each fraction randomises the previous ones' and more
        y[chosen] = torch.as_tensor(coins[chosen], dtype=y.dtype, device=device)
        return y

    def piece(fraction: float) -> dict:
        y = labels(fraction)
        model = arch.build(x.shape[1], seed=0, dtype=torch.float32, device=device)
        with torch.no_grad():
            f0, f0_test = model(x.float())[:, 0].double(), model(x_test.float())[:, 0].double()
        result = train(model, x.float(), y.float(), learning_rate=learning_rate, steps=s["steps"],
                       x_test=x_test.float(), record_every=max(1, s["steps"] // 50), progress=False)  # fmt: skip
        times = result.t.to(torch.float64)
        predictor = gradient_descent_mse(kernel, y, learning_rate=learning_rate, discrete=True)
        closed, _ = predictor(times, f0, f0_test, kernel_test)
        measures = generalization_bound(spec, y)
        return {
            "fraction_changed": float((y != y_true).double().mean()),
            "norm": measures.norm,
            "arora_term": math.sqrt(2 * measures.norm / n),
            "bound": measures.bound,
            "steps": result.t,
            "loss": result.loss,
            "loss_closed_form": squared_loss(closed, y, "mean"),
            "test_error": float((result.test_outputs[-1].double().sign() != y_test).double().mean()),
        }

    fractions = s["fractions"]
    rows = [run.piece(f"fraction{p:.2f}", lambda p=p: piece(p)) for p in fractions]
    norms = [r["norm"] for r in rows]
    terms = [r["arora_term"] for r in rows]
    left = [r["loss"][-1] / r["loss"][0] for r in rows]
    errors = [r["test_error"] for r in rows]
    gaps = [abs(r["loss"][-1] - r["loss_closed_form"][-1]) / r["loss"][0] for r in rows]

    figure, axes = new_figure(1, 3, width=12.5, row_height=4.0)
    ax = axes[0]
    for colour, p, r in zip(COLORS * 2, fractions, rows, strict=False):
        ax.plot(r["steps"], r["loss"], "-", color=colour, lw=1.8, label=f"{p:.0%} random")
        ax.plot(r["steps"], r["loss_closed_form"], ":", color=colour, lw=1.4)
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("training loss")
    ax.set_title("training speed (dotted: closed form)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(fractions, terms, "o-", color=COLORS[0])
    ax.set_xlabel("fraction of labels randomised")
    ax.set_ylabel("sqrt(2 y^T H^-1 y / n)")
    ax.set_title("complexity (theorem 5.1's term)")
    ax = axes[2]
    ax.plot(fractions, errors, "s-", color=COLORS[1])
    ax.set_xlabel("fraction of labels randomised")
    ax.set_ylabel("test error (true labels)")
    ax.set_ylim(0, max(0.6, max(errors) + 0.05))
    ax.set_title("test error")
    save_figure(figure, run.figures, "labels")

    correlation = {"norm": _rank_correlation(norms), "left": _rank_correlation(left),
                   "error": _rank_correlation(errors)}  # fmt: skip
    checks = [
        Check(
            "complexity grows",
            "y^T H^-1 y grows with the fraction of random labels (Spearman rank correlation with the fraction "
            ">= 0.9; the paper's figure 2)",
            f"rank correlation {correlation['norm']:.2f}; y^T H^-1 y from {norms[0]:.3g} to {norms[-1]:.3g}",
            correlation["norm"] >= 0.9 and norms[-1] > norms[0],
        ),
        Check(
            "training slows",
            f"the share of the initial loss left after {s['steps']} steps grows with the fraction (rank "
            "correlation >= 0.9; theorem 4.1, figure 1)",
            f"rank correlation {correlation['left']:.2f}; from {left[0]:.3g} to {left[-1]:.3g}",
            correlation["left"] >= 0.9 and left[-1] > left[0],
        ),
        Check(
            "the closed form predicts training",
            f"at width {s['width']} the network's final loss is the closed form's with H^inf within 5% of the "
            "initial loss, for every fraction",
            f"largest gap {max(gaps):.3g} of the initial loss",
            max(gaps) < 0.05,
        ),
        Check(
            "generalization worsens",
            "the test error on true labels grows with the fraction randomised (rank correlation >= 0.8; test "
            "error at 0% below that at 100%)",
            f"rank correlation {correlation['error']:.2f}; from {errors[0]:.3f} to {errors[-1]:.3f}",
            correlation["error"] >= 0.8 and errors[0] < errors[-1],
        ),
    ]
    comparisons = [
        Comparison(
            "sqrt(2 y^T H^-1 y / n), true vs all random labels",
            "grows steadily with the fraction (figure 2; MNIST and CIFAR)",
            f"{terms[0]:.3g} at 0%, {terms[-1]:.3g} at 100% ({terms[-1] / terms[0]:.1f} x)",
        ),
        Comparison(
            "training speed",
            "true labels fastest, random slowest (figure 1)",
            f"loss left after {s['steps']} steps: {left[0]:.2e} (0%) ... {left[-1]:.2e} (100%)",
        ),
        Comparison(
            "test error", "grows with the fraction", f"{errors[0]:.3f} (0%) ... {errors[-1]:.3f} (100%)"
        ),
        Comparison(
            "network", "two-layer ReLU, m = 10000, first layer trained", f"the same, m = {s['width']}"
        ),
    ]
    summary = (
        f"Digits {s['classes'][0]} against {s['classes'][1]} from scikit-learn's 8x8 digits ({n} training, "
        f"{x_test.shape[0]} test images, centred, each scaled to norm sqrt(64)), labels +-1, a fraction of them "
        f"replaced by fair coin flips. Two-layer ReLU network, width {s['width']}, first layer trained, readout "
        f"fixed, no biases; full-batch gradient descent on the mean squared loss with learning rate "
        f"N / lambda_max = {learning_rate:.3g} for {s['steps']} steps."
    )
    notes = ["MNIST cannot be downloaded here: two classes of scikit-learn's 8x8 digits replace it."]
    metrics = {"fractions": fractions, "learning_rate": learning_rate, "eigenvalues": spec.eigenvalues,
               "runs": rows, "rank_correlation": correlation, "closed_form_gap": gaps}  # fmt: skip
    figures = {
        "labels": "Left: training loss by fraction of random labels, network (solid) and closed form with H^inf "
        "(dotted). Middle: the complexity term of theorem 5.1. Right: test error on the true labels."
    }
    return Outcome(summary, figures, metrics, checks, comparisons, notes)
