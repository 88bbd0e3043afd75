"""Infinite-width kernels of one-hidden-layer networks against Monte Carlo over networks from `build()`."""

from __future__ import annotations

import math

import pytest
import torch

from ntkit.layers import Dense, Serial
from ntkit.layers.activations import (
    GELU,
    Abs,
    AbsLinear,
    Elementwise,
    Erf,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softplus,
    Tanh,
)

ACTIVATIONS = [
    ReLU(),
    LeakyReLU(0.2),
    Abs(),
    AbsLinear(0.3, -1.1),
    Identity(),
    Erf(),
    GELU(),
    Tanh(),
    Sigmoid(),
    Softplus(),
    Elementwise(torch.sin, torch.cos, order=48),
    Elementwise(lambda x: x * torch.sigmoid(x), order=64),  # SiLU with autograd's derivative
]


def _inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    x[3] = 0.0  # a zero-norm input
    x[4] = -x[0]  # an antipodal pair
    return x


def _per_unit_contributions(net: torch.nn.Sequential, x: torch.Tensor):
    """Per-hidden-unit contributions to the empirical NNGP and NTK of a one-hidden-layer network, by autograd.

    In the NTK parametrization the NNGP is the part of the NTK due to the last layer (Lee et al. 2019):
    NNGP(x, x') = sum_k df/dW2_k(x) df/dW2_k(x') + df/db2(x) df/db2(x'). The NTK adds the first layer's
    weights
    and bias. Both are sums over independent hidden units, so their Monte-Carlo standard error comes from the
    spread of the per-unit terms.
    """
    first, last = net[0], net[-1]
    rows = {"nngp": [], "ntk": [], "bias": []}
    outputs = net(x)[:, 0]
    grads = [
        torch.autograd.grad(outputs[i], list(net.parameters()), retain_graph=True) for i in range(len(x))
    ]
    names = [name for name, _ in net.named_parameters()]
    per_name = {name: torch.stack([g[k] for g in grads]) for k, name in enumerate(names)}
    w1 = per_name["0.weight"]  # (n, m, d)
    b1 = per_name.get("0.bias")  # (n, m)
    w2 = per_name[f"{len(net) - 1}.weight"][:, 0, :]  # (n, m)
    b2 = per_name.get(f"{len(net) - 1}.bias")  # (n, 1)
    assert first.weight.shape[0] == w2.shape[1] and last.weight.shape[0] == 1
    rows["nngp"] = torch.einsum("ik,jk->kij", w2, w2)
    ntk = rows["nngp"] + torch.einsum("ikd,jkd->kij", w1, w1)
    if b1 is not None:
        ntk += torch.einsum("ik,jk->kij", b1, b1)
    rows["ntk"] = ntk
    rows["bias"] = b2 @ b2.T if b2 is not None else torch.zeros(len(x), len(x), dtype=x.dtype)
    return rows


@pytest.mark.parametrize("act", ACTIVATIONS, ids=[repr(a) for a in ACTIVATIONS])
def test_nngp_and_ntk_match_a_wide_built_network(act):
    # One network with 2^16 hidden units: they are 2^16 independent draws of the first layer, so the
    # empirical kernels are Monte-Carlo sums whose standard error we estimate from the per-unit spread.
    width = 2**16
    arch = Serial(Dense(width, w_std=1.3, b_std=0.3), act, Dense(1, w_std=0.9, b_std=0.2))
    x = _inputs()
    kernel = arch.kernel(x)
    net = arch.build(x.shape[1], seed=7, dtype=torch.float64)
    parts = _per_unit_contributions(net, x)
    for name, exact in (("nngp", kernel.nngp), ("ntk", kernel.ntk)):
        units = parts[name]
        estimate = units.sum(0) + parts["bias"]
        se = units.std(0) * math.sqrt(width)
        # 5 standard errors: a false alarm has probability ~6e-7 per entry (the seed is fixed, so the test is
        # deterministic); 1e-10 covers entries with no spread (e.g. Identity's exactly linear features).
        excess = (estimate - exact).abs() - (5 * se + 1e-10)
        assert float(excess.max()) <= 0, (name, estimate, exact, se)
        assert torch.isfinite(exact).all()


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("act", [ReLU(), Erf(), Tanh()], ids=["relu", "erf", "tanh"])
def test_nngp_is_the_output_covariance_over_many_networks(act, parametrization):
    # The literal definition: f(x) f(x') averaged over many independently seeded finite networks. Each network
    # contributes one sample per pair; with 1500 networks the standard error is ~3% of the kernel scale.
    arch = Serial(
        Dense(64, w_std=1.2, b_std=0.1, parametrization=parametrization),
        act,
        Dense(1, w_std=1.0, b_std=0.1, parametrization=parametrization),
    )
    x = _inputs()
    exact = arch.kernel(x).nngp
    samples = []
    with torch.no_grad():
        for seed in range(1500):
            f = arch.build(x.shape[1], seed=seed, dtype=torch.float64)(x)[:, 0]
            samples.append(f[:, None] * f[None, :])
    stacked = torch.stack(samples)
    mean = stacked.mean(0)
    se = stacked.std(0) / math.sqrt(len(samples))
    # With one hidden layer the output covariance equals the NNGP at any width (the readout averages
    # independent hidden units), so width 64 is exact in expectation and 5 SE is the whole tolerance.
    excess = (mean - exact).abs() - (5 * se + 1e-12)
    assert float(excess.max()) <= 0, (mean, exact, se)
