"""Bad input to empirical_ntk: clear errors that name the argument, raised before any heavy work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkit.empirical import empirical_ntk


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


X = torch.randn(4, 3, dtype=torch.float64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["x1", "x2"])
def test_nonfinite_inputs(bad, which):
    x = X.clone()
    x[1, 2] = bad
    args = (x, None) if which == "x1" else (X, x)
    with pytest.raises(ValueError, match=f"{which} contains 1 NaN or infinite"):
        empirical_ntk(mlp(), *args)


def test_shapes_the_model_rejects():
    with pytest.raises(ValueError, match=r"model rejected x1 \(examples of shape \(7,\)"):
        empirical_ntk(mlp(), torch.randn(4, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="x1 and x2 must have the same shape after the example axis"):
        empirical_ntk(mlp(), X, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="x1 must hold at least one example"):
        empirical_ntk(mlp(), torch.randn(0, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x1 must hold at least one example"):
        empirical_ntk(mlp(), torch.tensor(1.0, dtype=torch.float64))


def test_input_types():
    with pytest.raises(TypeError, match=r"x1 must be a torch\.Tensor or numpy\.ndarray"):
        empirical_ntk(mlp(), [[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="x2 must have a floating dtype"):
        empirical_ntk(mlp(), X, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="x1 must hold floating-point or integer numbers"):
        empirical_ntk(mlp(), np.array([["a", "b", "c"]]))
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        empirical_ntk(lambda x: x, X)
    # float64 data on a float32 model: cast to the model's dtype, result in the model's dtype
    assert empirical_ntk(mlp().float(), X).dtype == torch.float32


def test_argument_values():
    with pytest.raises(ValueError, match="outputs must be one of"):
        empirical_ntk(mlp(), X, outputs="trace")
    with pytest.raises(ValueError, match="method must be one of"):
        empirical_ntk(mlp(), X, method="fast")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        empirical_ntk(mlp(), X, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        empirical_ntk(mlp(), X, batch_size=2.5)
    with pytest.raises(TypeError, match="progress must be None, True or False"):
        empirical_ntk(mlp(), X, progress="yes")


def test_unknown_params():
    model = mlp()
    with pytest.raises(ValueError, match=r"params\[1\]='2.wieght' is not a parameter of the model"):
        empirical_ntk(model, X, params=["0.weight", "2.wieght"])
    with pytest.raises(ValueError, match=r"params\[0\] \(a tensor of shape \(5, 3\)\) is not a parameter"):
        empirical_ntk(model, X, params=[torch.zeros(5, 3, dtype=torch.float64)])
    with pytest.raises(TypeError, match=r"params\[0\] must be a parameter name or tensor"):
        empirical_ntk(model, X, params=[3])
    with pytest.raises(ValueError, match="params must name at least one parameter"):
        empirical_ntk(model, X, params=[])
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad=True"):
        empirical_ntk(model, X)


def test_train_mode_batchnorm_and_dropout_say_eval():
    bn = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 1)).double()
    with pytest.raises(ValueError, match=r"BatchNorm1d layer '1' is in training mode.*model\.eval\(\)"):
        empirical_ntk(bn, X)
    empirical_ntk(bn.eval(), X)  # fine in eval mode
    no_stats = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5, track_running_stats=False)).double().eval()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        empirical_ntk(no_stats, X)
    drop = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.2), nn.Linear(5, 1)).double()
    with pytest.raises(ValueError, match=r"Dropout layer '1' is in training mode.*model\.eval\(\)"):
        empirical_ntk(drop, X)
    empirical_ntk(drop.eval(), X)


class Centre(nn.Module):
    """Subtracts the batch mean: the output for one example depends on the others."""

    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


class Noisy(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


def test_batch_mixing_and_randomness_found_by_the_probe():
    model = nn.Sequential(nn.Linear(3, 4), Centre(), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match="depends on the other examples in the batch"):
        empirical_ntk(model, X)
    model = nn.Sequential(nn.Linear(3, 4), Noisy(), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match="different outputs for the same input in two calls"):
        empirical_ntk(model, X)


def test_model_outputs_that_are_not_per_example():
    class Total(nn.Module):
        def forward(self, x):
            return x.sum()

    with pytest.raises(ValueError, match="must map a batch of n examples to an output of shape"):
        empirical_ntk(nn.Sequential(nn.Linear(3, 2), Total()).double(), X)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x), x

    with pytest.raises(TypeError, match="model must return a single tensor"):
        empirical_ntk(Pair().double(), X)


def test_integer_inputs_for_embeddings_are_allowed_and_kept():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 1)).double()
    tokens = np.array([[1, 2], [3, 4], [5, 9]])
    result = empirical_ntk(model, tokens, torch.tensor([[0, 1]]))
    assert result.shape == (3, 1) and result.dtype == torch.float64
    with pytest.raises(TypeError, match="x1 and x2 must both be floating or both integer"):
        empirical_ntk(model, tokens, torch.zeros(1, 2, dtype=torch.float64))


def test_memory_budget_is_validated_and_sets_the_blocks(monkeypatch):
    for bad, error in [("1GB", TypeError), (True, TypeError), (0, ValueError), (-5, ValueError)]:
        with pytest.raises(error, match="memory_budget"):
            empirical_ntk(mlp(), X, memory_budget=bad)
    with pytest.raises(ValueError, match="memory_budget must be finite"):
        empirical_ntk(mlp(), X, memory_budget=float("inf"))
    from ntkit.empirical import DEFAULT_EMPIRICAL_BUDGET, _batching, jacobian, layerwise, ntk_vp

    assert DEFAULT_EMPIRICAL_BUDGET == 2**30
    batches = []
    run_blocks = _batching.run_blocks

    def spy(*args, **kwargs):
        batches.append(kwargs["batch"])
        return run_blocks(*args, **kwargs)

    x = torch.randn(40, 3, dtype=torch.float64)
    model = mlp()
    reference = empirical_ntk(model, x, method="jacobian")
    for method, module in (("jacobian", jacobian), ("ntk-vp", ntk_vp), ("layerwise", layerwise)):
        monkeypatch.setattr(module, "run_blocks", spy)
        batches.clear()
        # a budget of a few examples' features: small blocks, the same kernel
        small = empirical_ntk(model, x, method=method, memory_budget=4096)
        assert batches and batches[0] < 40, (method, batches)
        assert torch.allclose(small, reference, rtol=1e-12, atol=0)
        batches.clear()
        empirical_ntk(model, x, method=method)  # the default budget: one block
        assert batches == [40], (method, batches)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")
def test_inputs_without_features_are_refused():
    model = nn.Sequential(nn.Linear(0, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match=r"x1 has no features.*\(0,\)"):
        empirical_ntk(model, torch.zeros(4, 0, dtype=torch.float64))
    with pytest.raises(ValueError, match="x2 has no features"):
        empirical_ntk(mlp(), X, torch.zeros(2, 3, dtype=torch.float64)[:, :0].reshape(2, 0, 1))


@pytest.mark.parametrize("method", ["jacobian", "ntk-vp", "layerwise", "auto"])
@pytest.mark.parametrize(("dtype", "scale"), [(torch.float64, 1e160), (torch.float32, 1e20)])
def test_a_kernel_that_overflows_the_dtype_is_an_error_not_inf(method, dtype, scale):
    """The outputs are finite, but gradient products (x . x') overflow: no inf or NaN kernel comes back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).to(dtype)
    x = torch.randn(5, 3, dtype=dtype).abs() * scale
    with torch.no_grad():
        assert bool(torch.isfinite(model(x)).all())
    with pytest.raises(ValueError, match=r"empirical kernel is not finite.*overflowed.*normalise.*float64"):
        empirical_ntk(model, x, method=method)
