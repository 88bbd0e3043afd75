"""The building blocks of the contractions: the symmetric Gram product and large symmetric kernels."""

from __future__ import annotations

import torch
from torch import nn

from ntkit.empirical import _contract, empirical_ntk


def test_symmetric_panels_equal_the_whole_block_and_are_exactly_symmetric():
    # well above the panel threshold, and not a multiple of a panel
    j = torch.randn(777, 3, 11, dtype=torch.float64)
    for mode in ("mean", "diagonal", "full"):
        whole = _contract.dense(j, j, mode)
        panels = _contract.symmetric(
            lambda rows, cols, mode=mode: _contract.dense(j[rows], j[cols], mode), 777
        )
        # the same dot products, blocked differently: rounding-level differences only
        assert torch.allclose(panels, whole, rtol=1e-13, atol=1e-13)
        # mirrored with the output axes swapped, not recomputed: T_ab(x, x') == T_ba(x', x) bit for bit
        assert torch.equal(panels, _contract.mirror(panels))


def test_large_symmetric_kernel_matches_the_unsymmetric_route():
    # a diagonal block of n >= _contract._SYMMETRIC_MIN (256) examples is contracted by panels on and above
    # its diagonal; x2=x takes plain products throughout. ntk-vp slices its column tangents per panel: "full"
    # (k = 2 tangents per example, both output axes) covers that indexing.
    assert 600 >= _contract._SYMMETRIC_MIN
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x = torch.randn(600, 3, dtype=torch.float64)
    for mode in ("mean", "full"):
        for method in ("layerwise", "jacobian", "ntk-vp"):
            if method == "ntk-vp" and mode == "mean":
                continue
            sym = empirical_ntk(model, x, outputs=mode, method=method)
            plain = empirical_ntk(model, x, x, outputs=mode, method=method)
            assert ((sym - plain).abs().max() / plain.abs().max()) < 1e-12
            assert torch.equal(sym, _contract.mirror(sym))
