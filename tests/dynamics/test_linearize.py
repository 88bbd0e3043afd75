"""linearize: the first-order Taylor model, against explicit Jacobians and the discrete closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from ntkit.dynamics import linearize, train
from ntkit.predict import gradient_descent_mse, max_learning_rate

DT = torch.float64


def _explicit_jacobian(model, x):
    """(n * k, P) Jacobian of the outputs with respect to the trainable parameters, by reverse mode."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    rows = x.shape[0] * model(x).shape[1]
    return torch.cat([j.reshape(rows, -1) for j in jac.values()], dim=1), params


def _tanh_net(width=32, out=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, out)).to(DT)


def test_linearized_model_is_the_taylor_expansion():
    net = _tanh_net()
    x = torch.randn(5, 3, dtype=DT)
    lin = linearize(net)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=1e-14)
    jac, params0 = _explicit_jacobian(net, x)
    # Move the linearized parameters; the output must be f(theta_0) + J (theta - theta_0), exactly.
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.3 * torch.randn_like(p))
    delta = torch.cat([(lin.module.get_parameter(n) - params0[n]).reshape(-1) for n in params0])
    expected = net(x) + (jac @ delta).reshape(5, 2)
    torch.testing.assert_close(lin(x), expected, rtol=0, atol=1e-12)
    # Its Jacobian is the model's Jacobian at theta_0 wherever theta is, and the original model is untouched.
    jac_lin, _ = _explicit_jacobian(lin, x)
    torch.testing.assert_close(jac_lin, jac, rtol=0, atol=1e-12)
    assert not torch.equal(lin(x), net(x))


def test_parameters_buffers_and_frozen_layers():
    net = _tanh_net()
    net[0].requires_grad_(False)  # a frozen first layer stays frozen and outside the expansion
    lin = linearize(net)
    trainable = [name for name, p in lin.named_parameters() if p.requires_grad]
    assert trainable == ["module.2.weight", "module.2.bias"]
    assert sorted(name for name, _ in lin.named_buffers()) == sorted(
        f"initial.{name}" for name, _ in net.named_parameters()
    )
    x = torch.randn(4, 3, dtype=DT)
    lin(x).sum().backward()
    assert lin.module[0].weight.grad is None and lin.module[2].weight.grad is not None
    # A model without trainable parameters cannot be linearized; a non-module is a TypeError.
    with pytest.raises(ValueError, match="no trainable parameters"):
        linearize(net.requires_grad_(False))
    with pytest.raises(TypeError, match="model"):
        linearize(lambda x: x)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linearized_training_matches_discrete_closed_form(reduction):
    """Gradient descent on the linearized network is exactly (I - eta T / N)^t: float64 round-off only."""
    from ntkit.empirical import empirical_ntk
    from ntkit.layers import mlp

    net = mlp(2, 256, b_std=0.1).build(4, seed=3, dtype=DT)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 4, generator=g, dtype=DT)
    y = torch.randn(7, generator=g, dtype=DT)
    lin = linearize(net)
    kernel = empirical_ntk(net, x, outputs="mean")
    f0 = net(x)[:, 0].detach()
    lr = 0.9 * max_learning_rate(kernel[:7, :7], reduction=reduction)
    result = train(
        lin, x[:7], y, learning_rate=lr, steps=40, reduction=reduction, x_test=x[7:], record_every=5
    )
    predict = gradient_descent_mse(kernel[:7, :7], y, learning_rate=lr, reduction=reduction, discrete=True)
    train_pred, test_pred = predict(result.t.to(DT), f0[:7], f0[7:], kernel[7:, :7])
    # 40 steps of float64 arithmetic on O(1) outputs: agreement to ~1e-13; 1e-10 is numerical precision.
    torch.testing.assert_close(result.train_outputs, train_pred, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.test_outputs, test_pred, rtol=0, atol=1e-10)
    assert float(result.loss[-1]) < 0.1 * float(result.loss[0])  # it trained


def test_linearized_multi_output_with_frozen_hidden_layers_matches_closed_form():
    """Only the readout trains: the NTK is exactly K (x) I_k, so k outputs follow the closed form exactly."""
    from ntkit.empirical import empirical_ntk
    from ntkit.layers import Dense, ReLU, Serial

    arch = Serial(Dense(128, trainable=False), ReLU(), Dense(3, b_std=0.5))
    net = arch.build(4, seed=1, dtype=DT)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, generator=g, dtype=DT)
    y = torch.randn(6, 3, generator=g, dtype=DT)
    kernel = empirical_ntk(net, x, outputs="mean")
    f0 = net(x).detach()
    lr = 0.8 * max_learning_rate(kernel[:6, :6], y_train_size=y.numel())
    result = train(linearize(net), x[:6], y, learning_rate=lr, steps=25, x_test=x[6:], record_every=5)
    predict = gradient_descent_mse(kernel[:6, :6], y, learning_rate=lr, discrete=True)
    train_pred, test_pred = predict(result.t.to(DT), f0[:6], f0[6:], kernel[6:, :6])
    torch.testing.assert_close(result.train_outputs, train_pred, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.test_outputs, test_pred, rtol=0, atol=1e-10)
