"""run_blocks with several workers: the same matrices as one worker, errors and stores handled, threads restored."""

from __future__ import annotations

import threading

import pytest
import torch

from ntkit import tiling


def _entry_block(x: torch.Tensor, calls: list):
    """A block function whose every entry is an independent plain-loop value: k(i, j) = cos(x_i - x_j) + x_i x_j."""

    def block(rows: slice, cols: slice, on_diagonal: bool) -> dict[str, torch.Tensor]:
        calls.append((rows.start, cols.start, threading.current_thread().name, torch.get_num_threads()))
        a, b = x[rows], x[cols]
        return {"k": torch.cos(a[:, None] - b[None, :]) + a[:, None] * b[None, :]}

    return block


def _reference(x: torch.Tensor) -> torch.Tensor:
    n = len(x)
    out = torch.empty(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            out[i, j] = torch.cos(x[i] - x[j]) + x[i] * x[j]
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_two_workers_fill_every_entry_as_the_plain_loop_does(symmetric):
    x = torch.linspace(-2, 3, 37, dtype=torch.float64)
    calls: list = []
    threads = torch.get_num_threads()
    out = tiling.run_blocks(
        _entry_block(x, calls), ["k"], 37, 37, dtype=x.dtype, device=x.device, symmetric=symmetric,
        tile=8, workers=2,
    )["k"]  # fmt: skip
    torch.testing.assert_close(out, _reference(x), rtol=1e-15, atol=1e-15)
    assert len(calls) == (15 if symmetric else 25)  # 5 x 5 tiles; the upper triangle only when symmetric
    assert len({(r, c) for r, c, _, _ in calls}) == len(calls)  # each block once
    assert all(name != threading.main_thread().name for _, _, name, _ in calls)
    assert all(count == 1 for _, _, _, count in calls)  # one torch thread per worker
    assert torch.get_num_threads() == threads


def test_an_error_in_a_worker_propagates_and_the_store_keeps_the_finished_blocks(tmp_path):
    x = torch.linspace(-1, 1, 24, dtype=torch.float64)
    threads = torch.get_num_threads()
    calls: list = []
    good = _entry_block(x, calls)

    def failing(rows, cols, on_diagonal):
        if rows.start == 16 and cols.start == 16:
            raise RuntimeError("block failed")
        return good(rows, cols, on_diagonal)

    kwargs = dict(dtype=x.dtype, device=x.device, symmetric=True, tile=8, store=tmp_path, key="k", workers=2)
    with pytest.raises(RuntimeError, match="block failed"):
        tiling.run_blocks(failing, ["k"], 24, 24, **kwargs)
    assert torch.get_num_threads() == threads
    first = len(calls)
    calls.clear()
    out = tiling.run_blocks(good, ["k"], 24, 24, **kwargs)["k"]
    torch.testing.assert_close(out, _reference(x), rtol=1e-15, atol=1e-15)
    # The failing block is the last of the 6 (in order), so the 5 before it were written and kept: only it is
    # computed again.
    assert first == 5 and len(calls) == 1
