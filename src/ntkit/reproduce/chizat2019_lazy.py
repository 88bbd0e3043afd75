"""chizat2019-lazy: lazy training by output scaling; the kernel freezes and training linearizes like 1/alpha.

Chizat, Oyallon and Bach (2019): any model becomes lazy when its output is scaled. With
f_alpha(theta, x) = alpha (f(theta, x) - f(theta_0, x)) and learning rate eta / alpha^2 the function-space
dynamics stay the same (the NTK of f_alpha is alpha^2 times that of f), while the parameters move by O(1/alpha)
(their theorem 2.3 and section 2): the relative change of the NTK during training and the distance between the
trained model and its linearization around theta_0 both shrink like 1/alpha, at a fixed width. The theorem
asks for a smooth model (a Lipschitz Jacobian), so the network here is an Erf network: with ReLU the distance
fell only like alpha^-0.65 on this task (activation patterns flip).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .._artifacts import COLORS, new_figure, save_figure
from ..dynamics import linearize, train
from ..layers import Erf, mlp
from ._base import Check, Comparison, Outcome, Run, fit_slope, within

NAME = "chizat2019-lazy"
TITLE = "Chizat et al. 2019: output scaling makes training lazy (drift and non-linearity ~ 1/alpha)"
SOURCE = (
    "L. Chizat, E. Oyallon, F. Bach, On Lazy Training in Differentiable Programming, NeurIPS 2019 "
    "(theorem 2.3, section 2)"
)
CHECKS = "kernel drift and distance from the linearized trajectory both fall like 1/alpha"


class Scaled(nn.Module):
    """alpha (f(theta, x) - f(theta_0, x)): the model centred at its initial outputs and scaled."""

    def __init__(self, model: nn.Module, alpha: float) -> None:
        super().__init__()
        self.model = model
        self.initial = copy.deepcopy(model).requires_grad_(False)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (self.model(x) - self.initial(x))


def settings(quick: bool) -> dict:
    if quick:
        return {"width": 64, "depth": 2, "n": 16, "dim": 4, "alphas": [1, 2, 4, 8, 16], "steps": 100,
                "learning_rate": "N / lambda_max / alpha^2"}  # fmt: skip
    return {"width": 128, "depth": 2, "n": 32, "dim": 4, "alphas": [1, 2, 4, 8, 16, 32, 64], "steps": 1000,
            "learning_rate": "N / lambda_max / alpha^2"}  # fmt: skip


def run(run: Run) -> Outcome:
    s = run.settings
    device, dtype = run.device, torch.float64
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(s["n"], s["dim"], generator=generator, dtype=dtype)
    x = (x / x.norm(dim=1, keepdim=True) * math.sqrt(s["dim"])).to(device)
    y = torch.sin(2 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    arch = mlp(s["depth"], s["width"], activation=Erf(), b_std=0.1)
    lam = float(torch.linalg.eigvalsh(arch.kernel(x, get="ntk").ntk).max())
    base_rate = s["n"] / lam  # eta lambda_max / N = 1 for alpha = 1, at half the stability limit

    def piece(alpha: float) -> dict:
        model = Scaled(arch.build(s["dim"], seed=0, dtype=dtype, device=device), alpha)
        rate = base_rate / alpha**2
        every = max(1, s["steps"] // 10)
        scaled = train(copy.deepcopy(model), x, y, learning_rate=rate, steps=s["steps"], record_every=every,
                       track_ntk=True, progress=False)  # fmt: skip
        linear = train(linearize(model), x, y, learning_rate=rate, steps=s["steps"], record_every=every,
                       progress=False)  # fmt: skip
        distance = (scaled.train_outputs - linear.train_outputs).pow(2).mean(dim=(1, 2)).sqrt()
        return {
            "steps": scaled.t,
            "drift": scaled.ntk_drift,
            "distance": distance / float(y.pow(2).mean().sqrt()),
            "loss": scaled.loss,
            "loss_linearized": linear.loss,
        }

    alphas = s["alphas"]
    rows = [run.piece(f"alpha{alpha}", lambda a=alpha: piece(a)) for alpha in alphas]
    drift = [r["drift"][-1] for r in rows]
    distance = [max(r["distance"]) for r in rows]
    drift_slope, distance_slope = fit_slope(alphas, drift), fit_slope(alphas, distance)
    converged = [r["loss"][-1] / r["loss"][0] for r in rows]

    figure, axes = new_figure(1, 2, width=11.5, row_height=4.0)
    for ax, values, slope, label in (
        (axes[0], drift, drift_slope, "||T_end - T_0||_F / ||T_0||_F"),
        (axes[1], distance, distance_slope, "max_t RMS(f_alpha - f_lin) / RMS(y)"),
    ):
        ax.plot(alphas, values, "o-", color=COLORS[0], label=f"measured (slope {slope:.2f})")
        ax.plot(alphas, [values[0] / a for a in alphas], ":", color="grey", label="slope -1")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("alpha (output scale; learning rate / alpha^2)")
        ax.set_ylabel(label)
        ax.legend(loc="lower left")
    axes[0].set_title("kernel drift over training")
    axes[1].set_title("distance from the linearized model")
    save_figure(figure, run.figures, "lazy")

    # the asymptotic law is fitted where alpha is past the first, non-lazy doubling
    tail = slice(1, None)
    tail_drift, tail_distance = fit_slope(alphas[tail], drift[tail]), fit_slope(alphas[tail], distance[tail])
    checks = [
        Check(
            "kernel drift ~ 1/alpha",
            "the relative NTK change over training falls like 1/alpha (slope over alpha >= 2 in [-1.25, -0.75])",
            f"slope {tail_drift:.3f} (all alphas {drift_slope:.3f}); {drift[0]:.3g} at alpha 1, {drift[-1]:.3g} at "
            f"{alphas[-1]}",
            within(tail_drift, -1.25, -0.75),
        ),
        Check(
            "linearization error ~ 1/alpha",
            "the largest distance between the scaled model and its linearization falls like 1/alpha (slope over "
            "alpha >= 2 in [-1.25, -0.75])",
            f"slope {tail_distance:.3f} (all alphas {distance_slope:.3f}); {distance[0]:.3g} at alpha 1, "
            f"{distance[-1]:.3g} at {alphas[-1]}",
            within(tail_distance, -1.25, -0.75),
        ),
        Check(
            "same function-space speed",
            "with learning rate eta / alpha^2 every alpha trains alike (final loss < 20% of the initial loss)",
            "final / initial loss " + ", ".join(f"{v:.2g}" for v in converged),
            all(v < 0.2 for v in converged),
        ),
    ]
    comparisons = [
        Comparison("kernel drift", "O(1/alpha)", f"slope {tail_drift:.2f}"),
        Comparison(
            "distance to the linearized trajectory", "O(1/alpha) (theorem 2.3)", f"slope {tail_distance:.2f}"
        ),
    ]
    summary = (
        f"An Erf network with {s['depth']} hidden layers of width {s['width']} (NTK parametrization, b_std 0.1, "
        f"float64), centred and scaled by alpha, on {s['n']} points of the sphere of radius sqrt({s['dim']}) with "
        f"targets sin(2 x_1) + 0.5 x_2 x_3; full-batch gradient descent on the mean squared loss for {s['steps']} "
        f"steps at learning rate {base_rate:.3g} / alpha^2, beside its linearization (ntkit.linearize) trained "
        "the same way."
    )
    metrics = {"alphas": alphas, "learning_rate_alpha1": base_rate, "runs": rows, "drift": drift,
               "distance": distance, "drift_slope": drift_slope, "distance_slope": distance_slope,
               "drift_slope_alpha_ge_2": tail_drift, "distance_slope_alpha_ge_2": tail_distance}  # fmt: skip
    figures = {
        "lazy": "Left: relative change of the NTK over training against the output scale alpha. Right: largest "
        "RMS distance between the scaled model and its linearization over the run; dotted: the 1/alpha law."
    }
    return Outcome(summary, figures, metrics, checks, comparisons)
