"""eoc-concentration: how fast the finite NTK concentrates at the edge of chaos, for phi(s) = a s + b |s|.

For the activations phi(s) = a s + b |s| initialised at the edge of chaos (w_std^2 = 1 / (a^2 + b^2), no
bias), the relative error of the empirical NTK against its limit falls like m^-1/2 in the width, with a
constant that shrinks as Delta_phi = b^2 / (a^2 + b^2) grows: Abs (Delta = 1, |phi'| = 1 everywhere, so the
backward pass keeps its norm exactly) concentrates better than ReLU (Delta = 1/2). With hidden widths growing
as m_k = k^2 m the fluctuations added by the later, wider layers are summable, sum_k 1 / m_k = (pi^2 / 6) / m
at most. At equal parameter count, though, the same additive picture (error^2 ~ sum_k 1 / m_k) favours a
constant width, which spreads the weights evenly; issue 11 states the opposite, and this run measures which
holds (the constant width, on every run so far).
"""

from __future__ import annotations

import itertools
import math

import torch

from .._artifacts import COLORS, new_figure, save_figure
from ..analysis import width_study
from ..layers import Abs, Dense, ReLU, Serial, edge_of_chaos
from ._base import Check, Comparison, Outcome, Run, within

NAME = "eoc-concentration"
TITLE = "NTK concentration at the edge of chaos: Abs against ReLU, quadratic against constant widths"
SOURCE = (
    "the concentration of the NTK for phi(s) = a s + b|s| at the edge of chaos with widths m_k = k^2 m "
    "(Delta_phi = b^2 / (a^2 + b^2)), as stated in ntkit's issue 11; Hanin and Nica 2020 for constant widths"
)
CHECKS = (
    "error ~ m^-1/2 for Abs and ReLU; Abs below ReLU; at equal parameters constant width beats k^2 growth"
)

ACTIVATIONS = {"abs": Abs, "relu": ReLU}


def settings(quick: bool) -> dict:
    if quick:
        return {"depths": [3], "base_widths": [8, 16, 32], "seeds": 8, "inputs": 16, "dim": 8}
    return {"depths": [3, 4, 5], "base_widths": [8, 16, 32, 64], "seeds": 10, "inputs": 24, "dim": 8}


def _widths(depth: int, base: int, growth: str) -> list[int]:
    return [k * k * base for k in range(1, depth + 1)] if growth == "quadratic" else [base] * depth


def _parameters(widths: list[int], dim: int) -> int:
    sizes = [dim, *widths, 1]
    return sum(a * b for a, b in itertools.pairwise(sizes))


def _constant_width(depth: int, base: int, dim: int) -> int:
    """The constant width whose network has as many weights as the quadratic-growth one."""
    target = _parameters(_widths(depth, base, "quadratic"), dim)
    return min(range(1, 100 * base * depth**2), key=lambda m: abs(_parameters([m] * depth, dim) - target))


def _arch(name: str, widths: list[int]) -> Serial:
    activation = ACTIVATIONS[name]()
    w_std = math.sqrt(edge_of_chaos(activation))
    layers = []
    for width in widths:
        layers += [Dense(width, w_std, None), activation]
    return Serial(*layers, Dense(1, w_std, None))


def run(run: Run) -> Outcome:
    s = run.settings
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(s["inputs"], s["dim"], generator=generator, dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True) * math.sqrt(s["dim"])).to(run.device)  # x.x'/d = 1 on the diagonal
    bases, seeds = s["base_widths"], s["seeds"]

    def study(name: str, depth: int, growth: str) -> dict:
        if growth == "constant":
            table = {base: _constant_width(depth, base, s["dim"]) for base in bases}
            result = width_study(lambda b: _arch(name, [table[b]] * depth), x, bases, seeds, progress=False)
        else:
            result = width_study(
                lambda b: _arch(name, _widths(depth, b, growth)), x, bases, seeds, progress=False
            )
        return {"mean": result.mean, "std": result.std, "slope": result.slope, "errors": result.errors}

    results = {
        (name, depth, growth): run.piece(
            f"{name}-depth{depth}-{growth}", lambda a=name, d=depth, g=growth: study(a, d, g)
        )
        for name in ACTIVATIONS
        for depth in s["depths"]
        for growth in ("quadratic", "constant")
    }

    figure, axes = new_figure(1, len(s["depths"]), width=4.2 * len(s["depths"]) + 1.5, row_height=4.0)
    for ax, depth in zip(axes, s["depths"], strict=True):
        for colour, name in zip(COLORS, ACTIVATIONS, strict=False):
            for growth, marker, line in (("quadratic", "o", "-"), ("constant", "s", "--")):
                r = results[(name, depth, growth)]
                ax.errorbar(bases, r["mean"], yerr=r["std"], fmt=marker + line, color=colour, capsize=3, ms=4,
                            label=f"{name}, {growth} (slope {r['slope']:.2f})")  # fmt: skip
        reference = results[("relu", depth, "quadratic")]["mean"][0]
        ax.plot(
            bases, [reference * (b / bases[0]) ** -0.5 for b in bases], ":", color="grey", label="slope -1/2"
        )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("m (quadratic: m_k = k^2 m; constant: same parameter count)")
        ax.set_ylabel("||T_m - T_inf||_F / ||T_inf||_F")
        ax.set_title(f"{depth} hidden layers")
        ax.legend(fontsize=7, loc="lower left")
    save_figure(figure, run.figures, "concentration")

    quadratic = [(n, d) for n in ACTIVATIONS for d in s["depths"]]
    slopes = {f"{n}-depth{d}": results[(n, d, "quadratic")]["slope"] for n, d in quadratic}
    abs_below = {
        d: [
            a < r
            for a, r in zip(
                results[("abs", d, "quadratic")]["mean"],
                results[("relu", d, "quadratic")]["mean"],
                strict=True,
            )
        ]
        for d in s["depths"]
    }
    ratio_growth = {
        f"{n}-depth{d}": [
            q / c
            for q, c in zip(
                results[(n, d, "quadratic")]["mean"], results[(n, d, "constant")]["mean"], strict=True
            )
        ]
        for n, d in quadratic
    }
    growth_wins = all(v < 1 for values in ratio_growth.values() for v in values)
    predicted = {
        d: [
            math.sqrt(sum(1 / m for m in _widths(d, b, "quadratic")) / (d / _constant_width(d, b, s["dim"])))
            for b in bases
        ]
        for d in s["depths"]
    }
    checks = [
        Check(
            "m^-1/2 for both",
            "with m_k = k^2 m the error falls like m^-1/2 for Abs and ReLU at every depth (fitted slope in "
            f"[-0.75, -0.25]; {seeds} networks per width)",
            ", ".join(f"{k}: {v:.2f}" for k, v in slopes.items()),
            all(within(v, -0.75, -0.25) for v in slopes.values()),
        ),
        Check(
            "Abs concentrates better",
            "Abs (Delta = 1) has a smaller mean error than ReLU (Delta = 1/2) at every width and depth",
            "; ".join(
                f"depth {d}: Abs/ReLU "
                + ", ".join(
                    f"{a / r:.2f}"
                    for a, r in zip(
                        results[("abs", d, "quadratic")]["mean"],
                        results[("relu", d, "quadratic")]["mean"],
                        strict=True,
                    )
                )
                for d in s["depths"]
            ),
            all(all(v) for v in abs_below.values()),
        ),
        Check(
            "constant width wins at equal parameters",
            "at equal parameter count a constant width gives the smaller error (quadratic / constant > 1 "
            "everywhere): the layers add fluctuations, error^2 ~ sum_k 1 / m_k, and spreading the weights evenly "
            "minimises that sum; predicted ratio sqrt(sum 1/m_k quadratic / sum 1/m_k constant) shown",
            "; ".join(f"{k}: " + ", ".join(f"{v:.2f}" for v in values) for k, values in ratio_growth.items())
            + "; predicted "
            + "; ".join(f"depth {d}: " + ", ".join(f"{v:.2f}" for v in predicted[d]) for d in s["depths"]),
            not growth_wins and all(v > 1 for values in ratio_growth.values() for v in values),
        ),
    ]
    comparisons = [
        Comparison(
            "error slope in m",
            "-1/2 for every phi = a s + b|s| at the edge of chaos",
            ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()),
        ),
        Comparison(
            "Abs against ReLU",
            "Abs (Delta = 1) concentrates better than ReLU (Delta = 1/2)",
            "held" if all(all(v) for v in abs_below.values()) else "did not hold everywhere",
        ),
        Comparison(
            "quadratic against constant width, equal parameters",
            "quadratic better (issue 11's statement)",
            "held"
            if growth_wins
            else "did not hold: constant width concentrates better at equal parameters (see the last check)",
        ),
    ]
    summary = (
        f"{s['inputs']} points on the sphere of radius sqrt({s['dim']}) in R^{s['dim']}; networks with "
        f"{', '.join(map(str, s['depths']))} hidden layers, no biases, NTK parametrization, at the edge of chaos "
        "(w_std^2 = 1 for Abs, 2 for ReLU); relative Frobenius error of the empirical NTK against the "
        f"infinite-width NTK, mean and standard deviation over {seeds} networks per width (float64)."
    )
    metrics = {
        "inputs": x,
        "studies": {f"{n}-depth{d}-{g}": r for (n, d, g), r in results.items()},
        "constant_widths": {
            f"depth{d}": {b: _constant_width(d, b, s["dim"]) for b in bases} for d in s["depths"]
        },
        "quadratic_widths": {
            f"depth{d}": {b: _widths(d, b, "quadratic") for b in bases} for d in s["depths"]
        },
        "slopes": slopes,
        "quadratic_over_constant": ratio_growth,
        "quadratic_over_constant_predicted": {f"depth{d}": v for d, v in predicted.items()},
    }
    figures = {
        "concentration": "Relative error of the empirical NTK against its limit, by base width m: Abs and ReLU at "
        "the edge of chaos, widths m_k = k^2 m (circles, solid) and a constant width with the same number of "
        "weights (squares, dashed); error bars: standard deviation over networks."
    }
    return Outcome(summary, figures, metrics, checks, comparisons)
