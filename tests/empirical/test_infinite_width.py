"""The empirical NTK of a network built by ntkit.layers approaches the architecture's infinite-width NTK.

At width w the empirical NTK fluctuates around its limit with standard deviation O(w**-1/2) per entry (Jacot
et al. 2018; Hanin & Nica 2019 give the 1/sqrt(w) order of the fluctuations at fixed depth), so the
root-mean-square relative error over seeds should fall with slope about -1/2 on a log-log plot. This ties the
finite route (empirical_ntk on `arch.build()`) to the analytic route (`arch.kernel()`), which share no code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntkit import layers
from ntkit.empirical import empirical_ntk


def rms_relative_error(arch, x: torch.Tensor, width_seeds: int) -> float:
    reference = arch.kernel(x).ntk
    errors = []
    for seed in range(width_seeds):
        net = arch.build(x.shape[1], seed=seed, dtype=torch.float64)
        errors.append(float((empirical_ntk(net, x) - reference).norm() / reference.norm()))
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def slope(widths, errors) -> float:
    return float(np.polyfit(np.log(widths), np.log(errors), 1)[0])


def check_convergence(widths, seeds, activation, b_std):
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = [
        rms_relative_error(layers.mlp(2, w, activation=activation, b_std=b_std), x, seeds) for w in widths
    ]
    fitted = slope(widths, errors)
    # -1/2 asymptotically; with a handful of seeds and the O(1/w) corrections of small widths the fitted slope
    # lands within about +-0.25 of it. A wrong kernel (missing term, wrong scale) would level off instead
    # (slope ~ 0) at the size of its bias.
    assert -0.8 < fitted < -0.25, f"errors {errors} give slope {fitted:.2f}"
    assert errors[-1] < 0.6 * errors[0]


def test_layerwise_ntk_of_a_wide_network_is_the_infinite_width_ntk_times_identity():
    # One wide network with k = 3 outputs, every T_ab by the layerwise engine (Gram products of NTKLinear
    # inputs and cotangents): the limit is T(x, x') I_k (DESIGN.md), so the cross-output terms must vanish and
    # the diagonal ones approach T, both within the O(width**-1/2) fluctuations. The width slope itself is
    # tests/layers/test_finite_width.py's check (by plain autograd); the slow test below repeats it here.
    width, k = 2048, 3
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    arch = layers.mlp(2, width, out=k, activation=layers.ReLU(), b_std=0.1)
    limit = arch.kernel(x).ntk[:, :, None, None] * torch.eye(k, dtype=torch.float64)
    net = arch.build(x.shape[1], seed=0, dtype=torch.float64)
    full = empirical_ntk(net, x, outputs="full", method="layerwise")
    # measured: error * sqrt(width) between 1.7 and 3.9 over 8 seeds (at widths 256 and 2048); a wrong scale
    # of a layer's contribution, or outputs that share parameters they should not, is O(1) at any width
    bound = 6.0 / math.sqrt(width)
    assert float((full - limit).norm() / limit.norm()) < bound
    cross = full * (1 - torch.eye(k, dtype=torch.float64))
    assert float(cross.norm() / limit.norm()) < bound
    mean = empirical_ntk(net, x, outputs="mean", method="layerwise")
    assert torch.allclose(mean, full.diagonal(dim1=2, dim2=3).mean(-1), rtol=1e-12, atol=0)
    assert float((mean - limit[:, :, 0, 0]).norm() / limit[:, :, 0, 0].norm()) < bound


@pytest.mark.slow
def test_empirical_ntk_converges_to_the_infinite_width_ntk_more_widths_and_seeds():
    check_convergence((32, 128, 512, 2048), seeds=12, activation=layers.Erf(), b_std=0.5)
