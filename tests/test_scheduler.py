"""The block scheduler end to end, through the public kernels: one-example blocks against plain loops over
pairs, budgets too small for one pair, and the documented progress rule.

`tests/test_tiling.py` checks `tiling.run_blocks` on synthetic block functions; here the real block functions
of the infinite-width kernel and of the empirical NTK run with the smallest blocks, and the result is compared
with a loop over pairs written in the test that never tiles anything.
"""

import io
import time
import warnings
from typing import ClassVar

import pytest
import torch
from torch import nn

from ntkit import tiling
from ntkit.empirical import empirical_ntk
from ntkit.layers import Conv, Dense, GlobalAvgPool, ReLU, Serial, mlp
from ntkit.layers import kernel as kernel_module

DT = torch.float64


@pytest.fixture
def tiles(monkeypatch):
    """The `tile` of every tiling.run_blocks call (the scheduler itself still runs)."""
    seen = []
    real = tiling.run_blocks

    def spy(*args, **kwargs):
        seen.append(kwargs["tile"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tiling, "run_blocks", spy)
    return seen


def _conv_arch():
    return Serial(Conv(8, 3), ReLU(), GlobalAvgPool(), Dense(1))


def _pairwise_analytic(arch, x1, x2):
    """K[i, j] = arch.kernel(x1[i], x2[j]), one pair per call with the default budget: nothing is tiled."""
    out = torch.empty(x1.shape[0], x2.shape[0], dtype=DT)
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            out[i, j] = arch.kernel(x1[i : i + 1], x2[j : j + 1], get="ntk", progress=False).ntk[0, 0]
    return out


# The per-pair and the tiled routes run the same float64 recursion on the same numbers; only the batching of
# the covariance products (bmm over a tile vs one pair) changes the summation order, ~depth * eps relative.
ANALYTIC_RTOL = 1e-12


def test_one_pair_blocks_of_a_spatial_kernel_match_a_loop_over_pairs(tiles):
    x = torch.randn(5, 2, 6, generator=torch.Generator().manual_seed(0), dtype=DT)
    y = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    arch = _conv_arch()
    # 3000 bytes hold one pair's spatial covariances (2592 bytes) but not four: 1 x 1 tiles.
    rect = arch.kernel(x, y, get="ntk", memory_budget=3000, progress=False).ntk
    assert tiles[-1] == 1
    sym = arch.kernel(x, get="ntk", memory_budget=3000, progress=False).ntk
    assert tiles[-1] == 1
    torch.testing.assert_close(rect, _pairwise_analytic(arch, x, y), rtol=ANALYTIC_RTOL, atol=0)
    torch.testing.assert_close(sym, _pairwise_analytic(arch, x, x), rtol=ANALYTIC_RTOL, atol=0)
    assert torch.equal(sym, sym.T)  # K(X, X) is exactly symmetric: the lower triangle is the upper's mirror


@pytest.mark.parametrize("side", [1, 3])
def test_small_tiles_of_a_dense_kernel_match_a_loop_over_pairs(monkeypatch, tiles, side):
    """Dense kernels never plan tiles under 16 x 16 from a budget, so the planner is made to return `side`:
    one-row tiles, and tiles that do not divide n (partial edge tiles)."""
    monkeypatch.setattr(kernel_module, "_tile_side", lambda *args, **kwargs: side)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, generator=generator, dtype=DT)
    y = torch.randn(4, 3, generator=generator, dtype=DT)
    arch = mlp(2, 16, activation=ReLU(), w_std=1.4, b_std=0.3)
    rect = arch.kernel(x, y, get="ntk", progress=False).ntk
    sym = arch.kernel(x, get="ntk", progress=False).ntk
    assert tiles == [side, side]
    monkeypatch.undo()  # the reference loop runs with the library's own tiling (one pair: one tile)
    torch.testing.assert_close(rect, _pairwise_analytic(arch, x, y), rtol=ANALYTIC_RTOL, atol=0)
    torch.testing.assert_close(sym, _pairwise_analytic(arch, x, x), rtol=ANALYTIC_RTOL, atol=0)
    assert torch.equal(sym, sym.T)


def _model():
    """Two hidden layers, so that T_ab(x, x') != T_ba(x, x') (with one, T_ab = sum_h W_ah W_bh (...) is
    symmetric in a, b and a mirror that forgot to swap the output axes would go unnoticed)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def _jacobian_rows(model, x):
    """J[i, a] = d f_a(x_i) / d theta, flattened, by torch.autograd.grad one example and one output at a time."""
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])[0]
        grads = [torch.autograd.grad(out[a], params, retain_graph=True) for a in range(out.shape[0])]
        rows.append(torch.stack([torch.cat([g.reshape(-1) for g in per_output]) for per_output in grads]))
    return torch.stack(rows)  # (n, k, P)


def _pairwise_empirical(model, x1, x2):
    """T_ab(x_i, x'_j) = <J[i, a], J'[j, b]> by a loop over pairs; "mean" is (1/k) sum_a T_aa."""
    j1, j2 = _jacobian_rows(model, x1), _jacobian_rows(model, x2)
    k = j1.shape[1]
    full = torch.empty(x1.shape[0], x2.shape[0], k, k, dtype=DT)
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            full[i, j] = j1[i] @ j2[j].T
    return full, torch.diagonal(full, dim1=2, dim2=3).mean(dim=2)


# Dot products of 83 float64 gradient entries, kernel entries up to ~4, summed in another order: measured
# <= 1e-15 absolute; 1e-13 leaves room for other BLAS builds.
EMPIRICAL_TOL = {"rtol": 1e-12, "atol": 1e-13}


@pytest.mark.parametrize("method", ["jacobian", "ntk-vp", "layerwise"])
@pytest.mark.parametrize("outputs", ["mean", "full"])
def test_one_example_blocks_of_an_empirical_ntk_match_a_loop_over_pairs(tiles, method, outputs):
    """memory_budget=1 byte cannot hold one example's features; the scheduler still plans one example per
    block (tiling.block_size: 'at least one example per block, whatever the budget'), says with a warning naming
    memory_budget that it exceeds it, and the kernel is exact."""
    model = _model()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=generator, dtype=DT)
    y = torch.randn(3, 4, generator=generator, dtype=DT)
    over = pytest.warns(RuntimeWarning, match="memory_budget=1 bytes is smaller than one example")
    with over:
        rect = empirical_ntk(model, x, y, outputs=outputs, method=method, memory_budget=1, progress=False)
    assert tiles[-1] == (1, 1)
    with over:
        sym = empirical_ntk(model, x, outputs=outputs, method=method, memory_budget=1, progress=False)
    assert tiles[-1] == (1, 1)
    full_rect, mean_rect = _pairwise_empirical(model, x, y)
    full_sym, mean_sym = _pairwise_empirical(model, x, x)
    torch.testing.assert_close(rect, full_rect if outputs == "full" else mean_rect, **EMPIRICAL_TOL)
    torch.testing.assert_close(sym, full_sym if outputs == "full" else mean_sym, **EMPIRICAL_TOL)
    # exactly symmetric: T(x, x') = T(x', x)^T (outputs swapped too for "full")
    mirrored = sym.transpose(0, 1)
    assert torch.equal(sym, mirrored.transpose(2, 3) if outputs == "full" else mirrored)


def test_batch_size_one_is_one_example_blocks(tiles):
    model = _model()
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(4), dtype=DT)
    sym = empirical_ntk(model, x, batch_size=1, method="jacobian", progress=False)
    assert tiles[-1] == (1, 1)
    torch.testing.assert_close(sym, _pairwise_empirical(model, x, x)[1], **EMPIRICAL_TOL)
    assert torch.equal(sym, sym.T)


# --- budgets too small for one pair: a MemoryBudgetError before any block is computed ------------------------


@pytest.mark.parametrize(
    ("arch", "x", "budget", "match"),
    [
        # one pair of these spatial covariances needs 2592 bytes
        (_conv_arch(), torch.ones(4, 2, 6, dtype=DT), 2591, "too small for even one pair of inputs"),
        # dense kernels need at least a 16 x 16 tile of their temporaries
        (mlp(2, 16), torch.ones(4, 3, dtype=DT), 1000, r"too small for even a 16x16 block"),
    ],
    ids=["spatial", "dense"],
)
def test_a_budget_below_one_block_raises_before_any_block(monkeypatch, arch, x, budget, match):
    calls = []
    monkeypatch.setattr(tiling, "run_blocks", lambda *args, **kwargs: calls.append(1))
    with pytest.raises(tiling.MemoryBudgetError, match=match) as info:
        arch.kernel(x, memory_budget=budget, progress=False)
    assert "raise memory_budget" in str(info.value)
    assert isinstance(info.value, MemoryError)  # the documented base class, for code that catches it
    assert calls == []  # refused while planning: the scheduler never started


def test_the_smallest_spatial_budget_that_holds_one_pair_is_accepted(tiles):
    """The edge of the refusal above: 2592 bytes (one pair) runs, with one-pair tiles."""
    x = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(5), dtype=DT)
    arch = _conv_arch()
    k = arch.kernel(x, get="ntk", memory_budget=2592, progress=False).ntk
    assert tiles[-1] == 1
    torch.testing.assert_close(k, _pairwise_analytic(arch, x, x), rtol=ANALYTIC_RTOL, atol=0)


# --- progress: True always, False never, None after 2 s on a terminal or in a notebook ----------------------


def _kernels(progress):
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(6), dtype=DT)
    mlp(1, 8).kernel(x, progress=progress)
    empirical_ntk(
        _model(), torch.randn(6, 4, generator=torch.Generator().manual_seed(7), dtype=DT), progress=progress
    )


class _Bar:
    """Stands in for tqdm: records how the scheduler configured its bar."""

    made: ClassVar[list] = []

    def __init__(self, *, total, initial, desc, disable, delay, **kwargs):
        self.desc, self.disable, self.delay = desc, disable, delay
        _Bar.made.append(self)

    def update(self, count=1):
        pass

    def close(self):
        pass


@pytest.mark.parametrize(
    ("progress", "disable", "delay"),
    [(True, False, 0.0), (False, True, 2.0), (None, None, 2.0)],  # None: tqdm's own terminal detection
)
def test_progress_is_passed_to_the_bar_as_documented(monkeypatch, progress, disable, delay):
    monkeypatch.setattr(tiling, "tqdm", _Bar)
    _Bar.made.clear()
    _kernels(progress)
    assert [bar.desc.split(" (")[0] for bar in _Bar.made] == ["infinite-width kernel", "empirical NTK"]
    for bar in _Bar.made:
        assert bar.disable is disable
        if progress is not False:  # a disabled bar's delay is moot
            assert bar.delay == delay


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(("progress", "shown"), [(True, True), (False, False), (None, False)])
def test_progress_on_a_real_bar(monkeypatch, progress, shown):
    """With tqdm itself, writing to a stream that says it is a terminal: True draws the bar at once; False never;
    None waits 2 s first, longer than these runs take (well under a second), so nothing is drawn."""
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    _kernels(progress)
    text = stream.getvalue()
    assert ("infinite-width kernel" in text and "empirical NTK" in text) is shown
    if not shown:
        assert text == ""


def test_progress_none_shows_a_bar_on_a_terminal_once_the_run_has_lasted_two_seconds(monkeypatch):
    """The other half of the None rule: a run of 4 blocks of 0.75 s each draws its bar after 2 s."""
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)

    def slow(rows, cols, on_diagonal):
        time.sleep(0.75)
        return {"k": torch.zeros(rows.stop - rows.start, cols.stop - cols.start, dtype=DT)}

    kwargs = {"dtype": DT, "device": torch.device("cpu"), "symmetric": False, "tile": 1}
    tiling.run_blocks(slow, ("k",), 2, 2, progress=None, description="slow kernel", **kwargs)
    assert "slow kernel" in stream.getvalue()


@pytest.mark.parametrize("method", ["jacobian", "ntk-vp", "layerwise"])
def test_a_budget_that_holds_one_example_does_not_warn(method):
    model = _model()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(5), dtype=DT)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="memory_budget", category=RuntimeWarning)
        empirical_ntk(model, x, outputs="full", method=method, memory_budget=2**20, progress=False)
