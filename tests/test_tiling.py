"""Tile scheduling: blocks cover each entry once, budgets and fingerprints behave, stores are verified."""

import math

import numpy as np
import pytest
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


# --- the on-disk store: verified on resume, damage reported as one StoreError ---------------------------------

N, TILE = 40, 16  # a 3 x 3 grid of blocks; the upper triangle has 6


def _gram(x):
    """A block function computing x x^T and 2 x x^T + 1: two outputs, like the NNGP and the NTK."""

    def block(rows, cols, on_diagonal):
        s = x[rows] @ x[cols].T
        return {"nngp": s, "ntk": 2 * s + 1}

    return block


def _run(store, x, block_fn=None, **kwargs):
    return tiling.run_blocks(
        block_fn or _gram(x),
        ("nngp", "ntk"),
        x.shape[0],
        x.shape[0],
        dtype=x.dtype,
        device=x.device,
        symmetric=True,
        tile=TILE,
        store=store,
        key=tiling.fingerprint("gram", x),
        progress=False,
    )


def _finished_store(tmp_path):
    x = torch.randn(N, 3, dtype=torch.float64)
    expected = {name: t.clone() for name, t in _run(tmp_path / "k", x).items()}
    return x, tmp_path / "k", expected


def test_store_resumes_only_missing_blocks_with_identical_results(tmp_path):
    x = torch.randn(N, 3, dtype=torch.float64)
    expected = _run(None, x)
    calls = []
    inner = _gram(x)

    def interrupted(rows, cols, on_diagonal):
        calls.append((rows, cols))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return inner(rows, cols, on_diagonal)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "k", x, interrupted)
    assert np.load(tmp_path / "k" / "done.npy").sum() == 3
    calls.clear()

    def counting(rows, cols, on_diagonal):
        calls.append((rows, cols))
        return inner(rows, cols, on_diagonal)

    resumed = _run(tmp_path / "k", x, counting)
    assert len(calls) == 6 - 3
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0)


def test_store_detects_a_flipped_value(tmp_path):
    x, store, _ = _finished_store(tmp_path)
    data = np.load(store / "ntk.npy", mmap_mode="r+")
    data[30, 2] = np.nextafter(data[30, 2], np.inf)  # one ulp, in the mirrored lower triangle
    data.flush()
    del data
    with pytest.raises(tiling.StoreError, match=r"ntk\.npy.*checksum.*delete"):
        _run(store, x)


def test_store_detects_a_zeroed_block_whose_done_flag_is_set(tmp_path):
    x, store, _ = _finished_store(tmp_path)
    data = np.load(store / "nngp.npy", mmap_mode="r+")
    data[:TILE, :TILE] = 0.0
    data.flush()
    del data
    assert np.load(store / "done.npy").all()
    with pytest.raises(tiling.StoreError, match=r"block 0 .*nngp\.npy.*checksum"):
        _run(store, x)


def test_store_detects_a_truncated_file(tmp_path):
    x, store, _ = _finished_store(tmp_path)
    path = store / "ntk.npy"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 8 * N * 5)  # numpy's r+ mode would silently re-extend it with zeros
    with pytest.raises(tiling.StoreError, match=r"ntk\.npy.*truncated"):
        _run(store, x)
    assert path.stat().st_size == size - 8 * N * 5  # not re-extended


def test_store_detects_a_file_of_another_dtype_or_shape(tmp_path):
    x, store, expected = _finished_store(tmp_path)
    np.save(store / "ntk.npy", expected["ntk"].numpy().astype(np.float32))
    with pytest.raises(tiling.StoreError, match=r"ntk\.npy.*float32.*float64"):
        _run(store, x)
    np.save(store / "ntk.npy", expected["ntk"].numpy()[:, :-1])
    with pytest.raises(tiling.StoreError, match=r"ntk\.npy.*shape"):
        _run(store, x)


@pytest.mark.parametrize("damage", ["meta-garbage", "meta-missing-key", "data-missing", "done-garbage"])
def test_damaged_bookkeeping_is_one_store_error(tmp_path, damage):
    x, store, _ = _finished_store(tmp_path)
    if damage == "meta-garbage":
        (store / "meta.json").write_text('{"names": ["nngp", ')
        culprit = "meta.json"
    elif damage == "meta-missing-key":
        (store / "meta.json").write_text("[1, 2]")
        culprit = "meta.json"
    elif damage == "data-missing":
        (store / "nngp.npy").unlink()
        culprit = "nngp.npy"
    else:
        (store / "done.npy").write_bytes(b"not a numpy file")
        culprit = "done.npy"
    with pytest.raises(tiling.StoreError, match=rf"{culprit}.*(delete|another)") as info:
        _run(store, x)
    assert isinstance(info.value, ValueError)  # so `except ValueError` and the CLI's handler catch it


def test_store_of_another_computation_is_refused(tmp_path):
    x, store, _ = _finished_store(tmp_path)
    with pytest.raises(tiling.StoreError, match="different computation"):
        _run(store, x + 1)


def test_store_checks_free_disk_space_before_creating_files(tmp_path, monkeypatch):
    x = torch.randn(N, 3, dtype=torch.float64)
    need = 2 * N * N * 8

    class Usage:
        total, used, free = 10 * need, 10 * need - need // 2, need // 2

    monkeypatch.setattr(tiling.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(tiling.StoreError, match=r"free.*disk|disk.*free"):
        _run(tmp_path / "k", x)
    assert not (tmp_path / "k").exists() or not any((tmp_path / "k").iterdir())
    Usage.free = 2 * need
    _run(tmp_path / "k", x)  # enough room: it runs


def test_non_finite_block_is_a_clear_error(tmp_path):
    x = torch.randn(N, 3, dtype=torch.float64)
    inner = _gram(x)

    def overflowing(rows, cols, on_diagonal):
        out = inner(rows, cols, on_diagonal)
        if rows.start == TILE and cols.start == 2 * TILE:
            out["ntk"][0, 0] = math.inf
        return out

    for store in (None, tmp_path / "k"):
        with pytest.raises(ValueError, match=r"ntk.*rows 16:32.*columns 32:40.*float64.*w_std.*normalis"):
            _run(store, x, overflowing)
    # the blocks finished before the bad one are kept, and the bad one is not marked done
    assert 0 < np.load(tmp_path / "k" / "done.npy").sum() < 6


def test_fingerprint_parts_do_not_run_into_each_other():
    assert tiling.fingerprint("ab", "c") != tiling.fingerprint("a", "bc")
    assert tiling.fingerprint(None) != tiling.fingerprint("None")
    x = torch.arange(6.0)
    assert tiling.fingerprint(x.reshape(2, 3)) != tiling.fingerprint(x.reshape(3, 2))
    assert tiling.fingerprint(x) != tiling.fingerprint(x.double())
