"""The empirical NNGP: against a plain loop over examples and outputs, and in expectation against the NNGP."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ntkit
from ntkit.layers import Dense, Erf, Serial


def test_empirical_nngp_is_the_mean_product_of_outputs():
    net = nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        f1 = [net(x1[i : i + 1])[0] for i in range(5)]
        f2 = [net(x2[j : j + 1])[0] for j in range(2)]
    loop = torch.tensor(
        [[sum(float(f1[i][a] * f2[j][a]) for a in range(4)) / 4 for j in range(2)] for i in range(5)],
        dtype=torch.float64,
    )
    full = torch.tensor(
        [
            [[[float(f1[i][a] * f2[j][b]) for b in range(4)] for a in range(4)] for j in range(2)]
            for i in range(5)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(ntkit.empirical_nngp(net, x1, x2), loop.double(), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(
        ntkit.empirical_nngp(net, x1, x2, outputs="full"), full.double(), rtol=1e-13, atol=1e-15
    )
    diagonal = ntkit.empirical_nngp(net, x1, x2, outputs="diagonal", batch_size=2)
    torch.testing.assert_close(
        diagonal, torch.diagonal(full.double(), dim1=2, dim2=3), rtol=1e-13, atol=1e-15
    )
    sym = ntkit.empirical_nngp(net, x1.numpy())
    assert sym.shape == (5, 5) and torch.equal(sym, sym.T)


def test_empirical_nngp_averages_to_the_nngp():
    # One hidden layer: the output covariance equals the NNGP at any width (the readout averages independent
    # units), so the mean over networks and outputs is unbiased; 5 standard errors is the whole tolerance.
    arch = Serial(Dense(32, w_std=1.2, b_std=0.1), Erf(), Dense(16, w_std=0.9, b_std=0.2))
    x = torch.randn(4, 3, dtype=torch.float64)
    exact = arch.kernel(x).nngp
    draws = torch.stack(
        [ntkit.empirical_nngp(arch.build(3, seed=s, dtype=torch.float64), x) for s in range(300)]
    )
    se = draws.std(0) / math.sqrt(len(draws))
    assert float(((draws.mean(0) - exact).abs() - 5 * se).max()) <= 0


def test_empirical_nngp_refuses_what_has_no_per_example_outputs():
    with pytest.raises(ValueError, match="eval"):
        ntkit.empirical_nngp(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), torch.randn(6, 3))
    with pytest.raises(ValueError, match="outputs"):
        ntkit.empirical_nngp(nn.Linear(3, 2), torch.randn(4, 3), outputs="trace")
    with pytest.raises(TypeError, match="model"):
        ntkit.empirical_nngp(lambda x: x, torch.randn(4, 3))
