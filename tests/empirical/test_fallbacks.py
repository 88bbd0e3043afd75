"""The slow exact fallbacks take models the fast paths cannot, and nothing else: out-of-memory and bugs surface.

torch.OutOfMemoryError is a RuntimeError, the same class as "vmap has no batching rule for this operation", so
a fallback that caught RuntimeError alone would turn a CUDA OOM into a per-example loop (or, in "auto", into a
different method) instead of an error the user can act on (a smaller batch_size or memory_budget). Here the
OOM is simulated on the CPU by patching the batched call to raise it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit.empirical import empirical_ntk, jacobian, layerwise, ntk_vp


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


def test_jacobian_vmap_out_of_memory_is_raised_not_looped(monkeypatch):
    monkeypatch.setattr(jacobian, "vmap", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        empirical_ntk(mlp(), X, method="jacobian")


def test_ntk_vp_vmap_out_of_memory_is_raised_not_looped(monkeypatch):
    monkeypatch.setattr(ntk_vp, "vmap", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        empirical_ntk(mlp(), X, method="ntk-vp")


@pytest.mark.parametrize("method", ["layerwise", "auto"])
def test_layerwise_batched_backward_out_of_memory_is_raised(monkeypatch, method):
    grad = torch.autograd.grad

    def batched_out_of_memory(*args, is_grads_batched=False, **kwargs):
        if is_grads_batched:
            out_of_memory()
        return grad(*args, is_grads_batched=is_grads_batched, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", batched_out_of_memory)
    # "auto" plans with the layerwise engine first: the OOM must not quietly pick another method
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        empirical_ntk(mlp(), X, method=method)


def test_auto_switches_method_only_for_models_the_layerwise_plan_cannot_follow(monkeypatch):
    model = mlp()
    expected = empirical_ntk(model, X, method="jacobian")

    def unsupported(self, x):
        raise layerwise.LayerwiseUnsupported("the hooks cannot follow this model")

    monkeypatch.setattr(layerwise.Layerwise, "plan", unsupported)
    assert torch.allclose(empirical_ntk(model, X, method="auto"), expected, rtol=1e-12, atol=0)

    def planner_bug(self, x):
        raise KeyError("a bug in the planner")

    monkeypatch.setattr(layerwise.Layerwise, "plan", planner_bug)
    with pytest.raises(KeyError, match="a bug in the planner"):
        empirical_ntk(model, X, method="auto")
    monkeypatch.setattr(layerwise.Layerwise, "plan", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        empirical_ntk(model, X, method="auto")


def test_out_of_memory_in_the_probe_is_not_reported_as_a_rejected_input():
    class Full(nn.Module):
        def forward(self, x):
            out_of_memory()

    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        empirical_ntk(nn.Sequential(nn.Linear(3, 2), Full()).double(), X)
