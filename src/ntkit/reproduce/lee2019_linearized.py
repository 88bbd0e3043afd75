"""lee2019-linearized: a wide network trains like its linearization and like the closed form.

Lee et al. (2019), as in neural-tangents' function-space notebook: an Erf network (Dense 512, w_std 1, b_std
0.05; Dense 10) on 64 training digits, 1000 steps of full-batch gradient descent at learning rate 1.0, the
loss of the network beside its first-order Taylor expansion in the parameters (`ntkit.linearize`) and the
function-space prediction with the network's NTK at initialisation: closed form for the squared loss
(`ntkit.predict.gradient_descent_mse`, exact for the linearization with discrete steps), the integrated ODE
for cross-entropy (`ntkit.predict.gradient_descent`). Losses as in the notebook: 0.5 mean((f - y)^2) and
-mean(y log softmax(f)), both over all n x 10 entries, one-hot targets.
"""

from __future__ import annotations

import copy
import math

import torch

from .._artifacts import COLORS, new_figure, save_figure
from .._loss import squared_loss
from ..dynamics import linearize, train
from ..empirical import empirical_ntk
from ..layers import Dense, Erf, Serial
from ..predict import gradient_descent, gradient_descent_mse
from ..report.data import load_digits_split
from ._base import Check, Comparison, Outcome, Run

NAME = "lee2019-linearized"
TITLE = "Lee et al. 2019: a wide network trains like its linearization (MSE and cross-entropy)"
SOURCE = (
    "J. Lee, L. Xiao, S. S. Schoenholz, Y. Bahri, R. Novak, J. Sohl-Dickstein, J. Pennington, Wide Neural "
    "Networks of Any Depth Evolve as Linear Models Under Gradient Descent, NeurIPS 2019; neural-tangents' "
    "function-space linearization notebook"
)
CHECKS = "loss at t=0 as the NNGP predicts; network = linearization = closed form (MSE) / ODE (cross-entropy)"

PAPER = {"mse_t0": 0.2444, "mse_network_t500": 0.0434, "mse_linearized_t500": 0.0427}


def settings(quick: bool) -> dict:
    if quick:
        return {"n_train": 64, "n_test": 128, "width": 512, "steps": 300, "learning_rate": 1.0, "every": 10}
    return {"n_train": 64, "n_test": 512, "width": 512, "steps": 1000, "learning_rate": 1.0, "every": 10}


def _cross_entropy(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(y * torch.log_softmax(f, dim=-1)).mean()


def _train_cross_entropy(model, x, y, x_test, *, learning_rate, steps, every):
    """Full-batch gradient descent on the cross-entropy. ntkit.train does squared loss only, so this is the
    plain torch loop it would be; outputs recorded every ``every`` steps."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    losses, tests = [], []
    for step in range(steps + 1):
        out = model(x)
        loss = _cross_entropy(out, y)
        if step % every == 0 or step == steps:
            losses.append(float(loss.detach()))
            with torch.no_grad():
                tests.append(model(x_test))
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.tensor(losses, dtype=torch.float64), torch.stack(tests)


def run(run: Run) -> Outcome:
    s = run.settings
    device, dtype = run.device, torch.float64
    data = load_digits_split(s["n_train"], s["n_test"], 0, device, dtype)
    x, x_test = data.x_train, data.x_test
    y, y_test = data.y_train + 0.1, data.y_test + 0.1  # one-hot, as in the notebook
    arch = Serial(Dense(s["width"], 1.0, 0.05), Erf(), Dense(10, 1.0, 0.05))
    lr, steps, every = s["learning_rate"], s["steps"], s["every"]
    times = torch.tensor(list(range(0, steps + 1, every)), dtype=dtype)

    def start() -> tuple:
        """The network at initialisation, its empirical NTKs (train, test x train) and initial outputs."""
        net = arch.build(x.shape[1], seed=0, dtype=dtype, device=device)
        kernel = empirical_ntk(net, x, outputs="mean")
        kernel_test = empirical_ntk(net, x_test, x, outputs="mean")
        with torch.no_grad():
            return net, kernel, kernel_test, net(x), net(x_test)

    def mse_piece() -> dict:
        net, kernel, kernel_test, f0, f0_test = start()
        common = {
            "learning_rate": lr,
            "steps": steps,
            "x_test": x_test,
            "y_test": y_test,
            "record_every": every,
        }
        network = train(copy.deepcopy(net), x, y, progress=False, **common)
        linear = train(linearize(net), x, y, progress=False, **common)
        predictor = gradient_descent_mse(kernel, y, learning_rate=lr, discrete=True)
        closed_train, closed_test = predictor(times, f0, f0_test, kernel_test)
        return {
            "network": network.loss,
            "linearized": linear.loss,
            "closed_form": squared_loss(closed_train, y, "mean"),
            "network_test": network.test_loss,
            "linearized_test": linear.test_loss,
            "closed_form_test": squared_loss(closed_test, y_test, "mean"),
        }

    def ce_piece() -> dict:
        net, kernel, kernel_test, f0, f0_test = start()
        options = {"learning_rate": lr, "steps": steps, "every": every}
        network, network_test = _train_cross_entropy(copy.deepcopy(net), x, y, x_test, **options)
        linear, linear_test = _train_cross_entropy(linearize(net), x, y, x_test, **options)
        ode = gradient_descent(_cross_entropy, kernel, y, learning_rate=lr)
        ode_train, ode_test = ode(times, f0, f0_test, kernel_test)
        return {
            "network": network,
            "linearized": linear,
            "ode": torch.stack([_cross_entropy(f, y) for f in ode_train]),
            "network_test_accuracy": [
                float((f.argmax(1) == data.labels_test).double().mean()) for f in network_test
            ],
            "linearized_test_accuracy": [
                float((f.argmax(1) == data.labels_test).double().mean()) for f in linear_test
            ],
            "ode_test_accuracy": [float((f.argmax(1) == data.labels_test).double().mean()) for f in ode_test],
        }

    mse = run.piece("mse", mse_piece)
    ce = run.piece("cross-entropy", ce_piece)

    # the loss at t = 0: E over initialisations of 0.5 mean((f0 - y)^2) with f0 ~ GP(0, K) on each output
    nngp = arch.kernel(x, get="nngp").nngp
    entries = y.numel()
    expected_t0 = 0.5 * (float(y.pow(2).mean()) + float(nngp.diagonal().mean()))
    sd_t0 = 0.5 * math.sqrt(2 * 10 * float(nngp.pow(2).sum())) / entries  # var of sum f0^2 = 2 k tr(K^2)

    def relative(a: float, b: float) -> float:
        return abs(a - b) / abs(b)

    half = len(times) // 2  # t = steps / 2 (500 in the default run, the notebook's reported time)
    t_half = int(times[half])
    net_lin = max(relative(mse["network"][i], mse["linearized"][i]) for i in (half, -1))
    lin_closed = max(relative(a, b) for a, b in zip(mse["linearized"], mse["closed_form"], strict=True))
    ce_net_lin = max(relative(ce["network"][i], ce["linearized"][i]) for i in (half, -1))
    ce_lin_ode = max(relative(ce["linearized"][i], ce["ode"][i]) for i in (half, -1))

    figure, axes = new_figure(1, 2, width=11.5, row_height=4.0)
    t = times.cpu()
    for ax, part, title, extra in (
        (axes[0], mse, "mean squared error", "closed_form"),
        (axes[1], ce, "cross-entropy", "ode"),
    ):
        ax.plot(t, part["network"], "-", color=COLORS[0], lw=2.2, label="network (train)")
        ax.plot(t, part["linearized"], "--", color=COLORS[1], lw=1.8, label="linearized (train)")
        ax.plot(
            t,
            part[extra],
            ":",
            color="black",
            lw=1.8,
            label="closed form" if extra == "closed_form" else "ODE",
        )
        if part is mse:
            ax.plot(t, part["network_test"], "-", color=COLORS[2], lw=2.2, label="network (test)")
            ax.plot(t, part["linearized_test"], "--", color=COLORS[3], lw=1.8, label="linearized (test)")
            ax.plot(t, part["closed_form_test"], ":", color="grey", lw=1.8, label="closed form (test)")
        ax.set_yscale("log")
        ax.set_xlabel("gradient step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend(fontsize=8)
    save_figure(figure, run.figures, "losses")

    checks = [
        Check(
            "loss at initialisation",
            "the loss at t = 0 is the NNGP's expectation 0.5 (mean y^2 + mean K(x, x)) within 3 of its standard "
            "deviations over initialisations",
            f"{mse['network'][0]:.4f} against {expected_t0:.4f} +- {sd_t0:.4f}",
            abs(mse["network"][0] - expected_t0) <= 3 * sd_t0,
        ),
        Check(
            "network = linearization (MSE)",
            f"the training loss of the network and of its linearization agree within 10% at t = {t_half} and "
            f"t = {steps} (the notebook: 1.6% at t = 500)",
            f"largest relative difference {net_lin:.4f}",
            net_lin < 0.1,
        ),
        Check(
            "linearization = closed form (MSE)",
            "the linearization's loss is the closed form's with the output-averaged NTK at initialisation "
            "within 2% at every recorded step (they differ only by the NTK's cross-output terms, O(width^-1/2))",
            f"largest relative difference {lin_closed:.2e}",
            lin_closed < 0.02,
        ),
        Check(
            "network = linearization (cross-entropy)",
            f"the cross-entropy of the network and of its linearization agree within 10% at t = {t_half} and "
            f"t = {steps}",
            f"largest relative difference {ce_net_lin:.4f}",
            ce_net_lin < 0.1,
        ),
        Check(
            "linearization = ODE (cross-entropy)",
            "discrete gradient descent of the linearization follows the function-space ODE (gradient flow) within "
            f"5% at t = {t_half} and t = {steps} (the step-size error)",
            f"largest relative difference {ce_lin_ode:.4f}",
            ce_lin_ode < 0.05,
        ),
    ]
    comparisons = [
        Comparison(
            "MSE loss at t = 0", f"{PAPER['mse_t0']}", f"{mse['network'][0]:.4f}", "MNIST there, digits here"
        ),
        Comparison(
            f"MSE loss at t = {t_half}, network / linearized",
            f"{PAPER['mse_network_t500']} / {PAPER['mse_linearized_t500']} (at t = 500)",
            f"{mse['network'][half]:.4f} / {mse['linearized'][half]:.4f}",
        ),
        Comparison(
            f"MSE test loss at t = {steps}, network / linearized / closed form",
            "(plotted, not listed)",
            f"{mse['network_test'][-1]:.4f} / {mse['linearized_test'][-1]:.4f} / {mse['closed_form_test'][-1]:.4f}",
        ),
        Comparison(
            f"cross-entropy at t = {steps}, network / linearized / ODE",
            "(plotted, not listed)",
            f"{ce['network'][-1]:.4f} / {ce['linearized'][-1]:.4f} / {ce['ode'][-1]:.4f}",
        ),
        Comparison(
            "test accuracy after cross-entropy training, network / linearized / ODE",
            "(not listed)",
            f"{ce['network_test_accuracy'][-1]:.3f} / {ce['linearized_test_accuracy'][-1]:.3f} / "
            f"{ce['ode_test_accuracy'][-1]:.3f}",
        ),
    ]
    summary = (
        f"{s['n_train']} training and {s['n_test']} test digits (scikit-learn's 8x8, centred, scaled to norm "
        f"sqrt(64)), one-hot targets; Serial(Dense({s['width']}, w_std 1, b_std 0.05), Erf(), Dense(10, 1, 0.05)), "
        f"NTK parametrization, float64; full-batch gradient descent, learning rate {lr}, {steps} steps. MSE at "
        f"t = {t_half}: network {mse['network'][half]:.4f}, linearized {mse['linearized'][half]:.4f}, closed form "
        f"{mse['closed_form'][half]:.4f}."
    )
    notes = [
        "MNIST cannot be downloaded here: scikit-learn's 8x8 digits replace it, so the losses are not comparable "
        "one to one (the notebook's 0.2444 at t = 0 depends on MNIST's inputs through K(x, x)).",
        "ntkit.train trains on the squared loss only: the cross-entropy runs of the network and of its "
        "linearization use a plain torch SGD loop here.",
    ]
    metrics = {"times": times, "mse": mse, "cross_entropy": ce, "expected_mse_t0": expected_t0, "sd_mse_t0": sd_t0,
               "network_vs_linearized_mse": net_lin, "linearized_vs_closed_form_mse": lin_closed,
               "network_vs_linearized_ce": ce_net_lin, "linearized_vs_ode_ce": ce_lin_ode}  # fmt: skip
    figures = {
        "losses": "Training loss of the network (solid), its linearization (dashed) and the function-space "
        "prediction with the NTK at initialisation (dotted): squared loss with its test loss (left), "
        "cross-entropy (right)."
    }
    return Outcome(summary, figures, metrics, checks, comparisons, notes)
