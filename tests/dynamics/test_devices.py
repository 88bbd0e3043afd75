"""Every dynamics entry point keeps its inputs' device and dtype (CUDA is checked where a GPU is present)."""

from __future__ import annotations

import pytest
import torch

from ntkit.dynamics import linearize, train
from ntkit.predict import gp_inference, gradient_descent, gradient_descent_mse, gradient_descent_mse_ensemble

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_stay_on_the_inputs_device_and_dtype(device, dtype):
    from ntkit.layers import mlp

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=dtype).to(device)
    y = torch.randn(5, 2, generator=g, dtype=dtype).to(device)
    arch = mlp(1, 64, out=2)
    kernel = arch.kernel(x)
    k_tt, k_st = kernel.ntk[:5, :5], kernel.ntk[5:, :5]

    train_out, test_out = gradient_descent_mse(k_tt, y)(torch.tensor([0.0, 3.0]), 0.0, None, k_st)
    ode_train, ode_test = gradient_descent("cross_entropy", k_tt, torch.softmax(y, 1))(2.0, 0.0, None, k_st)
    ensemble = gradient_descent_mse_ensemble(arch, x[:5], y)(5.0, x[5:], compute_cov=True)
    posterior = gp_inference(kernel, torch.zeros(7, dtype=dtype, device=device), get="nngp", compute_cov=True)
    for out in (train_out, test_out, ode_train, ode_test, ensemble.ntk.mean, ensemble.nngp.covariance,
                posterior.nngp.mean):  # fmt: skip
        assert out.device.type == device and out.dtype == dtype

    net = arch.build(3, seed=0, dtype=dtype, device=device)
    lin = linearize(net)
    assert lin(x).device.type == device
    result = train(lin, x[:5].cpu(), y.cpu(), learning_rate=0.1, steps=3, x_test=x[5:])
    assert result.train_outputs.device.type == device and result.train_outputs.dtype == dtype
    assert result.test_outputs.device.type == device
