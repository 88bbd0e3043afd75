"""Chizat et al. 2019 (lazy training), quick version: every check holds."""

import torch

from ntkit.reproduce.chizat2019_lazy import Scaled

from ._helpers import failed_checks, quick_run


def test_scaled_model_starts_at_zero_with_alpha_squared_kernel():
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    scaled = Scaled(net, 4.0)
    assert torch.equal(scaled(x), torch.zeros(4, 1, dtype=torch.float64))
    trainable = [name for name, p in scaled.named_parameters() if p.requires_grad]
    assert trainable == [f"model.{name}" for name, _ in net.named_parameters()]


def test_chizat2019_quick(tmp_path):
    metrics = quick_run("chizat2019-lazy", tmp_path)
    assert not failed_checks(metrics), failed_checks(metrics)
    drift = metrics["metrics"]["drift"]
    assert drift == sorted(drift, reverse=True)
