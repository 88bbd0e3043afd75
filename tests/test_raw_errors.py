"""Inputs torch or numpy would reject with a raw error get one clear line naming the argument (issue 9, 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit.analysis.spectrum import spectrum
from ntkit.dynamics import linearize
from ntkit.layers import mlp
from ntkit.predict import gradient_descent_mse


def _x(n=5, d=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_inputs_that_require_grad_are_detached():
    x = _x().requires_grad_(True)
    kernel = mlp(2, 8).kernel(x, x[:3])
    assert not kernel.ntk.requires_grad and not kernel.nngp.requires_grad
    reference = mlp(2, 8).kernel(x.detach(), x[:3].detach())
    assert torch.equal(kernel.ntk, reference.ntk)  # the values do not depend on the flag
    assert torch.equal(mlp(2, 8).kernel(x).nngp, mlp(2, 8).kernel(x.detach()).nngp)


def test_meta_tensors_are_refused():
    meta = torch.empty(5, 3, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="x1 is on the meta device"):
        mlp(1, 8).kernel(meta)
    with pytest.raises(ValueError, match="k_train_train is on the meta device"):
        spectrum(torch.empty(4, 4, device="meta"))


def test_half_precision_kernels_never_reach_eigh():
    k = mlp(1, 8).kernel(_x()).ntk
    for dtype in (torch.float16, torch.bfloat16):
        too_few = rf"k_train_train is {dtype}, which has too few digits.*k_train_train\.float\(\)"
        with pytest.raises(TypeError, match=too_few):
            spectrum(k.to(dtype))
        with pytest.raises(TypeError, match="too few digits"):
            gradient_descent_mse(k.to(dtype), torch.zeros(5, 1, dtype=dtype))


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(4), nn.Dropout(0.5)], ids=["batchnorm", "dropout"])
def test_linearize_refuses_training_mode_batchnorm_and_dropout(layer):
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match=r"layer '1' is in training mode.*model\.eval\(\)"):
        linearize(model)
    linear = linearize(model.eval())  # in eval mode it is a fixed function
    torch.testing.assert_close(linear(_x()), model(_x()))
    linear.train()  # and switching the linearized model back is refused at the next call
    with pytest.raises(ValueError, match="training mode"):
        linear(_x())


def test_linearize_refuses_dict_outputs_naming_the_keys():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 2).double()

        def forward(self, x):
            h = self.body(x)
            return {"logits": h, "features": h.tanh()}

    with pytest.raises(TypeError, match=r"returned a dict with keys \['features', 'logits'\]"):
        linearize(Heads())(_x())
