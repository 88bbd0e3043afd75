"""The batch-mixing probe: mixing hidden by duplicated leading rows, by batch size or in the gradients only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit.empirical import empirical_ntk

METHODS = ("jacobian", "ntk-vp", "layerwise", "auto")
MIXING = "depends on the other examples in the batch"


class Centre(nn.Module):
    """Subtracts the batch mean, but only in batches of more than `above` examples (0: always)."""

    def __init__(self, above: int = 0):
        super().__init__()
        self.above = above

    def forward(self, h):
        return h - h.mean(dim=0, keepdim=True) if h.shape[0] > self.above else h


class GradientMix(nn.Module):
    """h + (m - m.detach()) with m the batch mean: the forward pass is per example, its gradients mix."""

    def forward(self, h):
        m = h.mean(dim=0, keepdim=True)
        return h + (m - m.detach())


def _net(middle: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), middle, nn.Tanh(), nn.Linear(6, 2)).double()


def _x(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("method", METHODS)
def test_duplicated_leading_rows_do_not_hide_batch_mixing(method):
    x = _x()
    x[:6] = x[0]  # a probe on the first rows sees one example six times: the batch mean is that example
    with pytest.raises(ValueError, match=MIXING):
        empirical_ntk(_net(Centre()), x, method=method)


@pytest.mark.parametrize("method", ("ntk-vp", "layerwise", "auto"))
def test_mixing_only_in_larger_batches_is_found_at_the_size_the_method_uses(method):
    # a block of all 40 examples mixes; a probe of a few examples would not
    with pytest.raises(ValueError, match=MIXING):
        empirical_ntk(_net(Centre(above=12)), _x(), method=method)


@pytest.mark.parametrize("method", ("jacobian", "ntk-vp", "layerwise"))
def test_a_model_that_never_mixes_at_the_sizes_used_gives_the_per_example_kernel(method):
    """Blocks of at most 10 examples (or jacobian's one at a time) never mix: the kernel is the plain net's."""
    x = _x()
    reference = empirical_ntk(_net(nn.Identity()), x, method="jacobian")
    result = empirical_ntk(_net(Centre(above=12)), x, method=method, batch_size=10)
    torch.testing.assert_close(result, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_mixing_in_the_gradients_only_is_found(method):
    x = _x()
    model = _net(GradientMix())
    with torch.no_grad():  # the forward pass alone is per example: batched and one-at-a-time outputs agree
        alone = torch.cat([model(x[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(model(x)[:5], alone, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match=r"gradients.*depend on the other examples"):
        empirical_ntk(model, x, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_independent_float32_models_pass_the_probe(method):
    """No false alarm: batched and single float32 passes differ by round-off, far below the probe's tolerance."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3)
    )
    x = _x(300).float() * 3
    result = empirical_ntk(model, x, method=method, outputs="diagonal")
    assert result.shape == (300, 300, 3) and bool(torch.isfinite(result).all())


def test_probe_rows_are_spread_and_distinct():
    from ntkit.empirical._checks import spread_rows

    x1 = torch.zeros(50, 2, dtype=torch.float64)
    x1[:, 0] = torch.arange(50.0)
    x1[:10] = -1.0  # ten copies of one row at the start
    x2 = torch.full((30, 2), 7.0, dtype=torch.float64)
    x2[-1] = 8.0
    rows = spread_rows(x1, x2, 8)
    assert rows.shape == (8, 2)
    assert torch.unique(rows, dim=0).shape[0] == 8  # no duplicates while distinct rows exist
    assert bool((rows[:, 0] >= 40).any())  # not only the leading rows of x1
    assert bool((rows == 7.0).all(dim=1).any()) or bool((rows == 8.0).all(dim=1).any())  # x2 is sampled too
    assert spread_rows(x1[:10], None, 4).shape == (1, 2)  # only one distinct row: it is used once
