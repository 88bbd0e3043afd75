"""The fast arcsin/sqrt route against Python's math library, entry by entry, in every layout it accepts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntkit.layers import _elementwise


def _points(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    inner = torch.rand(4000, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.finfo(dtype).eps
    ends = 1 - torch.logspace(math.log10(eps), -1, 500, dtype=torch.float64)
    edges = torch.tensor([-1.0, -0.0, 0.0, 1.0, 0.5, -0.5], dtype=torch.float64)
    return torch.cat([inner, ends, -ends, edges]).to(dtype)


def _ulps(got: torch.Tensor, exact: np.ndarray, dtype: torch.dtype) -> float:
    exact_t = torch.from_numpy(exact).to(dtype)  # the exact value rounded once to the dtype
    spacing = np.spacing(np.abs(exact_t.numpy())).astype(np.float64)
    return float(np.max(np.abs(got.double().numpy() - exact_t.double().numpy()) / spacing))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_asin_and_sqrt_within_one_ulp_of_python_math(dtype):
    x = _points(dtype)
    asin = _elementwise.asin(x, out=torch.empty_like(x))
    exact = np.array([math.asin(v) for v in x.double().tolist()])  # libm in double, far finer than float32
    # In float64, math.asin itself may be off by < 1 ulp, so the two can differ by up to 2.
    assert _ulps(asin, exact, dtype) <= (2.0 if dtype == torch.float64 else 1.0)
    positive = x.abs()
    root = _elementwise.sqrt(positive, out=torch.empty_like(positive))
    exact_root = np.array([math.sqrt(v) for v in positive.double().tolist()])
    if dtype == torch.float64:  # IEEE sqrt is correctly rounded: bit for bit
        assert torch.equal(root, torch.from_numpy(exact_root))
    else:
        assert _ulps(root, exact_root, dtype) <= 0.5


def test_layouts_in_place_permuted_and_strided():
    g = torch.Generator().manual_seed(1)
    base = torch.rand(6, 5, 4, 3, generator=g, dtype=torch.float64) * 2 - 1
    expected = torch.from_numpy(np.vectorize(math.asin)(base.numpy()))
    permuted = base.permute(2, 0, 3, 1)  # dense in memory, not contiguous: the numpy route
    out = torch.empty_like(permuted)
    assert out.stride() == permuted.stride()
    _elementwise.asin(permuted, out=out)
    torch.testing.assert_close(out, expected.permute(2, 0, 3, 1), rtol=0, atol=4e-16)
    strided = base[:, ::2]  # not one block of memory: torch's route, same values
    out = torch.empty(strided.shape, dtype=torch.float64)
    _elementwise.asin(strided, out=out)
    torch.testing.assert_close(out, expected[:, ::2], rtol=0, atol=4e-16)
    in_place = base.clone()
    assert _elementwise.asin(in_place, out=in_place) is in_place
    torch.testing.assert_close(in_place, expected, rtol=0, atol=4e-16)


def test_workspace_follows_the_layout_and_is_reused():
    like = torch.empty(4, 5, 6, dtype=torch.float64).permute(1, 2, 0)
    first = _elementwise.workspace(like)
    assert first.shape == like.shape and first.stride() == like.stride()
    second = _elementwise.workspace(torch.empty(3, 3, dtype=torch.float64))
    assert second.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
