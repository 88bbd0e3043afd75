"""Tile scheduling: blocks cover each entry once, budgets and fingerprints behave."""

import torch

from ntkit import tiling


def test_blocks_cover_upper_triangle_once():
    n, tile = 23, 5
    seen = torch.zeros(n, n, dtype=torch.int64)
    for rows, cols in tiling.blocks(n, n, tile, symmetric=True):
        seen[rows, cols] += 1
        if rows != cols:
            seen[cols, rows] += 1
    assert torch.equal(seen, torch.ones(n, n, dtype=torch.int64))
    rect = tiling.blocks(7, 11, 4, symmetric=False)
    assert sum((r.stop - r.start) * (c.stop - c.start) for r, c in rect) == 77


def test_tile_size_respects_budget():
    side = tiling.tile_size(10 * 2**20, 8, 6.0)
    assert 6 * 8 * side**2 <= 10 * 2**20
    assert tiling.tile_size(2**40, 8, 6.0) <= tiling._PREFERRED_TILE


def test_fingerprint_changes_with_data():
    x = torch.randn(3, 2)
    assert tiling.fingerprint("a", x) == tiling.fingerprint("a", x.clone())
    assert tiling.fingerprint("a", x) != tiling.fingerprint("a", x + 1)
    assert tiling.fingerprint("a", x) != tiling.fingerprint("b", x)
