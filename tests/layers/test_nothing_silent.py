"""Infinite-width kernels never return NaN, inf or an underflowed zero kernel silently (issue 9, section 2)."""

from __future__ import annotations

import warnings

import pytest
import torch

from ntkit.layers import Dense, Elementwise, KernelUnderflowWarning, ReLU, Serial, mlp


def _x(n=4, d=3, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_zero_features_are_refused():
    with pytest.raises(ValueError, match="x1 must have at least one example and no empty axis"):
        mlp(1, 8).kernel(torch.zeros(3, 0, dtype=torch.float64))
    with pytest.raises(ValueError, match="x2 must have at least one example and no empty axis"):
        mlp(1, 8).kernel(_x(d=3), torch.zeros(0, 3, dtype=torch.float64))


def test_underflow_at_depth_2000_warns():
    # ReLU halves the variance at every layer with w_std = 1 and no bias: 2^-2000 is below float64's range,
    # and the kernel would silently be all zeros.
    deep = mlp(2000, 8, w_std=1.0, b_std=0.0)
    with pytest.warns(KernelUnderflowWarning, match="underflowed.*edge of chaos"):
        kernel = deep.kernel(_x())
    assert float(kernel.nngp.abs().max()) == 0.0  # what the warning is about
    # At the edge of chaos (w_std = sqrt(2) for ReLU) the same depth keeps its scale, and nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelUnderflowWarning)
        kernel = mlp(2000, 8, w_std=2.0**0.5, b_std=0.0).kernel(_x())
    assert float(kernel.nngp.diagonal().min()) > 0.1
    # and between different inputs (x2 given) as well
    with pytest.warns(KernelUnderflowWarning):
        deep.kernel(_x(), _x(n=2) + 1.0)


def test_underflow_of_a_pooled_cnn_warns_with_and_without_the_self_covariance_tape():
    # float32's normal range ends at 2^-126: 140 ReLU convolutions at w_std = 1 halve the variance each time.
    # With the tape (the default) the recording pass checks every input once; with a budget too small for the
    # tape, each tile checks its own.
    from ntkit.layers import Conv, GlobalAvgPool

    deep = Serial(*[m for _ in range(140) for m in (Conv(2, 3), ReLU())], GlobalAvgPool(), Dense(1))
    x = torch.randn(3, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    for budget in (None, 3000):
        with pytest.warns(KernelUnderflowWarning, match="underflowed"):
            deep.kernel(x, memory_budget=budget)


@pytest.mark.parametrize(("dtype", "depth"), [(torch.float64, 1100), (torch.float32, 140)])
def test_overflow_of_deep_w_std_2_networks_raises(dtype, depth):
    # ReLU with w_std = 2 doubles the variance at every layer: 2^1100 overflows float64, 2^140 float32.
    arch = mlp(depth, 8, w_std=2.0, b_std=0.0)
    with pytest.raises(ValueError, match=r"kernel is not finite.*overflowed.*smaller w_std"):
        arch.kernel(_x(dtype=dtype))


def test_nan_from_a_user_function_names_the_activation():
    arch = Serial(Dense(8), Elementwise(torch.log), Dense(1))
    with pytest.raises(ValueError, match=r"Elementwise\(fn=torch.log\) returned NaN or inf"):
        arch.kernel(_x())
    # exp overflows only at large variance: the same error, naming it
    arch = Serial(Dense(8, w_std=40.0), Elementwise(torch.exp, order=16), Dense(1))
    with pytest.raises(ValueError, match=r"Elementwise\(fn=torch.exp, order=16\) returned NaN or inf"):
        arch.kernel(_x() * 30)


def test_a_finite_network_is_left_alone():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel = Serial(Dense(8), ReLU(), Dense(1)).kernel(_x())
    assert torch.isfinite(kernel.ntk).all()
