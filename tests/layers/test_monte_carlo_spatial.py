"""Spatial kernels against Monte Carlo over finite networks from `build()`.

One hidden convolution: the empirical kernels of a network with m channels are sums over m independent channels
(each channel's filter is an independent draw), so their expectation is the infinite-width kernel at any m and the
Monte-Carlo standard error follows from the per-channel spread. Deeper networks (two convolutions, residual
blocks, layer norm, pooling) have an O(1/m) bias as well; there the empirical NTK's error must shrink as the
channels grow, as m^-1/2 (Novak et al. 2019; Arora et al. 2019).
"""

from __future__ import annotations

import math

import pytest
import torch

import ntkit
from ntkit.layers import (
    AvgPool,
    Conv,
    Dense,
    Erf,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    ReLU,
    Residual,
    Serial,
)

ONE_HIDDEN = [
    ("1d-same-gap", (Conv(2**12, 3, w_std=1.3, b_std=0.3), ReLU(), GlobalAvgPool()), (2, 6)),
    (
        "1d-valid-stride-flatten",
        (Conv(2**11, 3, stride=2, padding="valid", b_std=0.2), Erf(), Flatten()),
        (2, 7),
    ),
    ("1d-circular-gap", (Conv(2**12, 4, padding="circular", w_std=1.1), ReLU(), GlobalAvgPool()), (1, 5)),
    ("2d-same-avgpool", (Conv(2**11, (3, 2), b_std=0.1), ReLU(), AvgPool(2), Flatten()), (2, 4, 4)),
    ("2d-stride-gap", (Conv(2**12, 3, stride=(2, 1), w_std=0.9), Erf(), GlobalAvgPool()), (1, 5, 4)),
    ("2d-layernorm-gap", (Conv(2**12, 3, b_std=0.2), LayerNorm(), ReLU(), GlobalAvgPool()), (2, 4, 3)),
]


def _inputs(shape):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, *shape, generator=generator, dtype=torch.float64)
    x[3] = x[0].flip(-1)  # a mirrored image
    return x


def _per_channel(net: torch.nn.Sequential, x: torch.Tensor, channels: int):
    """Per-hidden-channel contributions to the empirical NNGP and NTK, by autograd, and the readout bias part.

    The NNGP is the part of the NTK due to the readout weights (NTK parametrization; Lee et al. 2019). The
    readout's inputs are ordered channel-major (GlobalAvgPool: one per channel; Flatten: C * P of them), so its
    weights group by channel; so do the convolution's weights and biases (their first axis).
    """
    out = net(x)[:, 0]
    conv, readout = net[0], net[-1]
    hidden = [p for p in conv.parameters()]
    params = [*hidden, readout.weight, readout.bias]
    grads = [torch.autograd.grad(out[i], params, retain_graph=True) for i in range(len(x))]

    def by_channel(k):
        return torch.stack([g[k] for g in grads]).reshape(len(x), channels, -1)

    def gram(g):
        return torch.einsum("icr,jcr->cij", g, g)

    nngp = gram(by_channel(len(hidden)))
    ntk = nngp + sum(gram(by_channel(k)) for k in range(len(hidden)))
    bias = torch.stack([g[-1] for g in grads]).reshape(len(x), -1)
    return {"nngp": nngp, "ntk": ntk}, bias @ bias.T


@pytest.mark.parametrize(("name", "hidden", "shape"), ONE_HIDDEN, ids=[c[0] for c in ONE_HIDDEN])
def test_one_hidden_convolution_matches_a_wide_built_network(name, hidden, shape):
    channels = hidden[0].channels
    arch = Serial(*hidden, Dense(1, w_std=0.8, b_std=0.2))
    x = _inputs(shape)
    exact = arch.kernel(x)
    net = arch.build(shape, seed=3, dtype=torch.float64)
    parts, bias = _per_channel(net, x, channels)
    for kind in ("nngp", "ntk"):
        units = parts[kind]
        estimate = units.sum(0) + bias
        se = units.std(0) * math.sqrt(channels)
        # 5 standard errors (a false alarm has probability ~6e-7 per entry; the seed is fixed). LayerNorm's
        # finite normaliser uses the channels' own mean and variance, a 1/m effect: 3% allowance there.
        slack = 5 * se + 1e-10 + (0.03 * exact.ntk.abs().max() if "layernorm" in name else 0.0)
        excess = (estimate - getattr(exact, kind)).abs() - slack
        assert float(excess.max()) <= 0, (kind, estimate, getattr(exact, kind), se)


DEEP = [
    (
        "2d-two-convs-gap",
        lambda m: Serial(
            Conv(m, 3, b_std=0.1), ReLU(), Conv(m, 3, w_std=1.2), ReLU(), GlobalAvgPool(), Dense(1)
        ),
        (1, 4, 4),
    ),
    (
        "1d-residual-layernorm-flatten",
        lambda m: Serial(
            Conv(m, 3),
            Residual(ReLU(), Conv(m, 3, w_std=0.8)),
            LayerNorm(),
            ReLU(),
            Flatten(),
            Dense(1, b_std=0.1),
        ),
        (2, 6),
    ),
    (
        "2d-valid-avgpool-standard",
        lambda m: Serial(
            Conv(m, 2, padding="valid", parametrization="standard"),
            Erf(),
            AvgPool(2, stride=1),
            Conv(m, 2, padding="valid", b_std=0.2, parametrization="standard"),
            ReLU(),
            Flatten(),
            Dense(1, parametrization="standard"),
        ),
        (2, 4, 4),
    ),
]


@pytest.mark.parametrize(("name", "make", "shape"), DEEP, ids=[c[0] for c in DEEP])
def test_deep_empirical_ntk_approaches_the_kernel_as_channels_grow(name, make, shape):
    x = _inputs(shape)
    errors = {}
    for m in (16, 512):
        arch = make(m)
        exact = arch.kernel(x).ntk  # the standard parametrization's kernel depends on the widths
        errs = []
        for seed in range(3):
            net = arch.build(shape, seed=seed, dtype=torch.float64)
            empirical = ntkit.empirical_ntk(net, x)
            errs.append(float(torch.linalg.norm(empirical - exact) / torch.linalg.norm(exact)))
        errors[m] = sum(errs) / len(errs)
    # 32x the channels: the m^-1/2 law predicts a 5.7x smaller error; demand 2.5x, and a small error at 512.
    assert errors[512] < errors[16] / 2.5, errors
    assert errors[512] < 0.12, errors
