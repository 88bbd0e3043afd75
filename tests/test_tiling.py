"""Tile scheduling: blocks cover each entry once, budgets and fingerprints behave, stores are verified."""

import math
from typing import ClassVar

import numpy as np
import pytest
import torch

from ntkit import tiling

# --- the scheduler: each entry once, the upper triangle mirrored exactly, progress, budgets ----------------------

# (n1, n2, tile, symmetric): square and rectangular tiles, sizes that are and are not multiples of the tile
SCHEDULES = [
    (23, 23, 5, True),
    (20, 20, 5, True),
    (23, 23, (7, 3), True),
    (23, 23, (3, 7), True),
    (1, 1, 4, True),
    (7, 11, 4, False),
    (11, 7, (4, 3), False),
]


def _entry_value(a, b):
    """A value that tells every (row, column) pair apart, and K(a, b) != K(b, a): exact in float64."""
    return 1000.0 * a + b


def _recording(calls, tail=()):
    """A block function returning _entry_value on its block (with a tail: plus 0.25 i + 0.125 j)."""

    def block(rows, cols, on_diagonal):
        calls.append((rows, cols, on_diagonal))
        a = torch.arange(rows.start, rows.stop, dtype=torch.float64)[:, None]
        b = torch.arange(cols.start, cols.stop, dtype=torch.float64)[None, :]
        value = _entry_value(a, b)
        if tail:
            i = torch.arange(tail[0], dtype=torch.float64)[:, None]
            j = torch.arange(tail[1], dtype=torch.float64)[None, :]
            value = value[:, :, None, None] + 0.25 * i + 0.125 * j
        return {"k": value}

    return block


def _schedule(n1, n2, tile, symmetric, calls, tail=(), mirror=None, **kwargs):
    return tiling.run_blocks(
        _recording(calls, tail),
        ("k",),
        n1,
        n2,
        dtype=torch.float64,
        device=torch.device("cpu"),
        symmetric=symmetric,
        tile=tile,
        tail=tail,
        mirror=mirror,
        progress=False,
        **kwargs,
    )["k"]


@pytest.mark.parametrize(("n1", "n2", "tile", "symmetric"), SCHEDULES)
def test_every_entry_is_computed_once_and_the_upper_triangle_is_mirrored(n1, n2, tile, symmetric):
    calls = []
    out = _schedule(n1, n2, tile, symmetric, calls)
    # Each entry comes from exactly one block function call: its own block, or (below the diagonal of
    # K(X, X)) the mirror of the block holding its transpose; a diagonal block gives both of its triangles.
    computed = torch.zeros(n1, n2, dtype=torch.int64)
    for rows, cols, on_diagonal in calls:
        assert on_diagonal == (symmetric and rows == cols)
        computed[rows, cols] += 1
        if symmetric and not on_diagonal:
            assert rows.stop <= cols.start  # strictly above the diagonal: no entry of it is written twice
            computed[cols, rows] += 1
    assert torch.equal(computed, torch.ones(n1, n2, dtype=torch.int64))
    # The values: K(a, b) itself, or for K(X, X) the upper triangle's K(min, max) on both sides, exactly.
    a = torch.arange(n1, dtype=torch.float64)[:, None]
    b = torch.arange(n2, dtype=torch.float64)[None, :]
    expected = _entry_value(torch.minimum(a, b), torch.maximum(a, b)) if symmetric else _entry_value(a, b)
    assert torch.equal(out, expected)
    assert len(calls) == len(tiling.blocks(n1, n2, tile, symmetric))


@pytest.mark.parametrize("tile", [5, (7, 3), (3, 7)])
def test_mirror_of_a_tail_swaps_its_axes_too(tile):
    """Like an empirical NTK with outputs='full': below the diagonal, T_ab(x', x) = T_ba(x, x')."""
    n, k, calls = 17, 3, []
    out = _schedule(n, n, tile, True, calls, tail=(k, k), mirror=lambda block: block.permute(1, 0, 3, 2))
    i = torch.arange(k, dtype=torch.float64)[:, None]
    j = torch.arange(k, dtype=torch.float64)[None, :]
    for a in range(n):
        for b in range(n):
            upper = _entry_value(min(a, b), max(a, b)) + 0.25 * i + 0.125 * j  # what the block gave above
            assert torch.equal(out[a, b], upper if a <= b else upper.T), (a, b)


def test_symmetric_empirical_ntk_with_rectangular_blocks_is_exactly_symmetric():
    """The Jacobian method plans row panels 3x its column blocks when the columns do not fit the budget: the
    kernel is still T_ab(x, x') == T_ba(x', x) bit for bit, and equals the unsymmetric route."""
    from torch import nn

    from ntkit.empirical import _batching, empirical_ntk

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 2)).double()
    x = torch.randn(23, 6, dtype=torch.float64)
    n_params = sum(p.numel() for p in model.parameters())
    tiles = []
    original = _batching.tiling.run_blocks

    def spy(*args, **kwargs):
        tiles.append(kwargs["tile"])
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_batching.tiling, "run_blocks", spy)
        for mode in ("mean", "full"):
            budget = 10 * int(1.5 * 2 * n_params * 8)  # about ten examples' Jacobians
            sym = empirical_ntk(model, x, outputs=mode, method="jacobian", memory_budget=budget)
            rows, cols = tiles[-1]
            assert rows > cols and 23 % rows and 23 % cols  # rectangular, with partial edge blocks
            mirrored = sym.transpose(0, 1)
            assert torch.equal(sym, mirrored.transpose(2, 3) if mode == "full" else mirrored)
            plain = empirical_ntk(model, x, x, outputs=mode, method="jacobian")
            torch.testing.assert_close(sym, plain, rtol=1e-13, atol=1e-15)


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


# --- the empirical adapter: features once per row panel, column features cached when they fit --------------


@pytest.mark.parametrize(("symmetric", "cache"), [(True, True), (True, False), (False, True), (False, False)])
def test_column_features_are_cached_when_they_fit_and_row_features_computed_once_per_panel(symmetric, cache):
    from ntkit.empirical import _batching

    g = torch.Generator().manual_seed(0)
    # whole numbers: every product and sum is exact, so the kernel must equal the plain product bit for bit
    x1 = torch.randint(-3, 4, (22, 5), generator=g).double()
    x2 = None if symmetric else torch.randint(-3, 4, (13, 5), generator=g).double()
    row_calls, col_calls = [], []

    def row_features(x):
        row_calls.append(x.clone())
        return x

    def col_features(x):
        col_calls.append(x.clone())
        return x

    out = _batching.run_blocks(
        x1,
        x2,
        row_features=row_features,
        col_features=col_features,
        contract=lambda f1, f2, on_diagonal: f1 @ f2.T,
        tail=(),
        dtype=torch.float64,
        device=torch.device("cpu"),
        batch=5,
        cache_columns=cache,
        shared_features=True,
        progress=False,
        description="test",
    )
    other = x1 if x2 is None else x2
    assert torch.equal(out, x1 @ other.T)
    panels = math.ceil(22 / 5)
    if symmetric:
        # one kind of features: a panel's serve as its rows and as the columns of the panels above it
        assert row_calls == []
        distinct = {tuple(map(tuple, c.tolist())) for c in col_calls}
        assert len(distinct) == panels  # every tile of examples was featurised...
        assert len(col_calls) == (panels if cache else panels * (panels + 1) // 2)  # ...once, if cached
    else:
        assert len(row_calls) == panels  # one row panel at a time, each featurised once
        tiles = math.ceil(13 / 5)
        assert len(col_calls) == (tiles if cache else panels * tiles)


# --- the on-disk store: resumed where it stopped, never recomputing or trusting the wrong blocks -----------


def _store_run(store, x, block_fn, tile=TILE, symmetric=True, x2=None):
    return tiling.run_blocks(
        block_fn,
        ("nngp", "ntk"),
        x.shape[0],
        (x if x2 is None else x2).shape[0],
        dtype=x.dtype,
        device=x.device,
        symmetric=symmetric,
        tile=tile,
        store=store,
        key=tiling.fingerprint("gram", x, x2),
        progress=False,
    )


def _gram_between(x, x2):
    def block(rows, cols, on_diagonal):
        s = x[rows] @ x2[cols].T
        return {"nngp": s, "ntk": 2 * s + 1}

    return block


@pytest.mark.parametrize(
    ("tile", "symmetric", "stop_at"),
    [
        (TILE, True, 1),
        (TILE, True, 5),
        (TILE, True, 6),
        ((16, 6), True, 4),
        (TILE, False, 5),
        ((9, 14), False, 2),
    ],
)
def test_an_interrupted_store_recomputes_exactly_the_missing_blocks(tmp_path, tile, symmetric, stop_at):
    """Stop at the stop_at-th block, resume: the finished blocks are read back, the others computed once, the
    result equals an uninterrupted run in memory; a third run computes nothing."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    x2 = None if symmetric else torch.randn(29, 3, generator=g, dtype=torch.float64)
    inner = _gram_between(x, x if x2 is None else x2)
    expected = _store_run(None, x, inner, tile, symmetric, x2)
    first, later = [], []

    def interrupted(rows, cols, on_diagonal):
        first.append((rows.start, cols.start))
        if len(first) == stop_at:
            raise KeyboardInterrupt
        return inner(rows, cols, on_diagonal)

    def counting(rows, cols, on_diagonal):
        later.append((rows.start, cols.start))
        return inner(rows, cols, on_diagonal)

    store = tmp_path / "k"
    with pytest.raises(KeyboardInterrupt):
        _store_run(store, x, interrupted, tile, symmetric, x2)
    finished = first[:-1]
    assert int(np.load(store / "done.npy").sum()) == len(finished)
    resumed = _store_run(store, x, counting, tile, symmetric, x2)
    every = [(r.start, c.start) for r, c in tiling.blocks(N, N if x2 is None else 29, tile, symmetric)]
    assert later == [block for block in every if block not in finished]  # the rest, each once, in order
    for name in ("nngp", "ntk"):
        assert torch.equal(resumed[name], expected[name])
    later.clear()
    again = _store_run(store, x, counting, tile, symmetric, x2)
    assert later == [] and torch.equal(again["ntk"], expected["ntk"])


def test_a_half_written_block_is_recomputed_on_resume(tmp_path):
    """A block whose data reached the file but whose flag did not (killed in between) is not trusted: it is
    computed again, so garbage in its place never shows in the result."""
    x = torch.randn(N, 3, dtype=torch.float64)
    expected = _run(None, x)
    inner = _gram(x)
    calls = []

    def interrupted(rows, cols, on_diagonal):
        calls.append(rows)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return inner(rows, cols, on_diagonal)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "k", x, interrupted)
    data = np.load(tmp_path / "k" / "ntk.npy", mmap_mode="r+")
    data[:TILE, 2 * TILE :] = 7.0  # the third block (row panel 0, columns 32:40), unflagged
    data[2 * TILE :, :TILE] = 7.0  # and its mirror
    data.flush()
    del data
    resumed = _run(tmp_path / "k", x)
    assert torch.equal(resumed["ntk"], expected["ntk"])


def test_a_done_flag_without_its_data_is_reported(tmp_path):
    x = torch.randn(N, 3, dtype=torch.float64)
    inner = _gram(x)
    calls = []

    def interrupted(rows, cols, on_diagonal):
        calls.append(rows)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return inner(rows, cols, on_diagonal)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "k", x, interrupted)
    done = np.load(tmp_path / "k" / "done.npy", mmap_mode="r+")
    done[4] = True  # flagged, never computed: its entries are the file's zeros
    done.flush()
    del done
    with pytest.raises(tiling.StoreError, match=r"block 4 .*checksum"):
        _run(tmp_path / "k", x)


def test_a_changed_checksum_is_reported(tmp_path):
    x, store, _ = _finished_store(tmp_path)
    sums = np.load(store / "checksums.npy", mmap_mode="r+")
    sums[2, 1, 0] ^= 1
    sums.flush()
    del sums
    with pytest.raises(tiling.StoreError, match=r"block 2 .*ntk\.npy.*checksum"):
        _run(store, x)


# --- progress: the bar counts every block, from where a resumed run starts ---------------------------------


class _Bar:
    """Stands in for tqdm: records what the scheduler asked it to show."""

    made: ClassVar[list] = []

    def __init__(self, total, initial, disable, **kwargs):
        self.total, self.n, self.disable, self.closed = total, initial, disable, False
        self.initial = initial
        _Bar.made.append(self)

    def update(self, count=1):
        assert not self.closed
        self.n += count

    def close(self):
        self.closed = True


def test_progress_reaches_the_total_and_a_resumed_run_starts_at_its_finished_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(tiling, "tqdm", _Bar)
    _Bar.made.clear()
    x = torch.randn(N, 3, dtype=torch.float64)
    for progress, disable in ((True, False), (False, True), (None, None)):
        tiling.run_blocks(
            _gram(x), ("nngp", "ntk"), N, N, dtype=x.dtype, device=x.device, symmetric=True, tile=TILE,
            progress=progress,
        )  # fmt: skip
        bar = _Bar.made[-1]
        assert (bar.total, bar.initial, bar.n, bar.closed, bar.disable) == (6, 0, 6, True, disable)
    inner = _gram(x)
    calls = []

    def interrupted(rows, cols, on_diagonal):
        calls.append(rows)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return inner(rows, cols, on_diagonal)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "k", x, interrupted)
    assert _Bar.made[-1].closed and _Bar.made[-1].n == 2  # closed on the way out, at the blocks finished
    _run(tmp_path / "k", x)
    bar = _Bar.made[-1]
    assert (bar.total, bar.initial, bar.n, bar.closed) == (6, 2, 6, True)


# --- memory budgets: the planned blocks fit them ------------------------------------------------------------


@pytest.mark.parametrize("budget", [2**14, 10**6, 2**30, 2**40])
@pytest.mark.parametrize(("itemsize", "live"), [(4, 6.0), (8, 6.0), (8, 9.0 * 49)])
def test_tile_size_is_the_largest_side_within_the_budget(budget, itemsize, live):
    need = live * itemsize
    if need * tiling._MIN_TILE**2 > budget:
        with pytest.raises(tiling.MemoryBudgetError, match="raise memory_budget"):
            tiling.tile_size(budget, itemsize, live)
        return
    side = tiling.tile_size(budget, itemsize, live)
    assert need * side**2 <= budget
    assert side == tiling._PREFERRED_TILE or need * (side + 1) ** 2 > budget


@pytest.mark.parametrize("budget", [1, 5000, 10**6, 2**30])
@pytest.mark.parametrize(
    ("per_example", "per_pair"), [(0.0, 8.0), (1e3, 8.0), (1e5, 72.0), (1e6, 0.0), (0.0, 0.0)]
)
def test_block_size_is_the_largest_block_within_the_budget(budget, per_example, per_pair):
    n = 5000
    b = tiling.block_size(n, per_example, per_pair, budget=budget)

    def used(size):
        return 4 * size * per_example + size * size * per_pair

    assert 1 <= b <= min(n, tiling._MAX_BLOCK)
    if b > 1:
        assert used(b) <= budget
    assert b == min(n, tiling._MAX_BLOCK) or used(b + 1) > budget


@pytest.mark.parametrize("outputs", ["mean", "full"])
@pytest.mark.parametrize("budget", [2**17, 2**19, 2**20])
def test_empirical_jacobian_blocks_fit_the_budget_when_columns_are_not_cached(outputs, budget):
    """The Jacobians of a row panel and of a column block, and the block of pairs, measured as the method
    makes them, fit memory_budget together (the plan once counted the features only: 2.3x over for 'full')."""
    from torch import nn

    from ntkit.empirical import _batching, empirical_ntk, jacobian

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 8), nn.GELU(), nn.Linear(8, 2)).double()
    x = torch.randn(300, 6, dtype=torch.float64)
    features, pairs = [], []
    jacobians = jacobian.per_example_jacobians
    schedule = _batching.tiling.run_blocks

    def measured_jacobians(*args, **kwargs):
        out = jacobians(*args, **kwargs)
        features.append(sum(t.numel() * t.element_size() for t in out))
        return out

    def measured_blocks(block_fn, *args, **kwargs):
        def block(rows, cols, on_diagonal):
            out = block_fn(rows, cols, on_diagonal)
            pairs.append(sum(t.numel() * t.element_size() for t in out.values()))
            return out

        return schedule(block, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jacobian, "per_example_jacobians", measured_jacobians)
        patch.setattr(_batching.tiling, "run_blocks", measured_blocks)
        result = empirical_ntk(model, x, outputs=outputs, method="jacobian", memory_budget=budget)
    assert len(pairs) > 3  # several blocks: the budget binds
    assert 2 * max(features) + max(pairs) <= budget, (max(features), max(pairs), budget)
    reference = empirical_ntk(model, x[:50], outputs=outputs, method="jacobian")
    torch.testing.assert_close(result[:50, :50], reference, rtol=1e-12, atol=1e-14)
