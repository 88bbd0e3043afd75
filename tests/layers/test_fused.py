"""The fused route of the spatial recursion (layers/_fused.py): when it is taken, and that nothing is lost if
compiling fails. Its values are checked against the brute-force recursion in test_spatial_reference.py."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from ntkit.layers import Conv, Dense, GlobalAvgPool, ReLU, Serial, _fused
from ntkit.layers import kernel as kernel_driver

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler for TorchInductor")


def _cnn() -> Serial:
    return Serial(Conv(4, 3, b_std=0.1), ReLU(), Conv(4, 3, w_std=1.2), ReLU(), GlobalAvgPool(), Dense(1))


def _images(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 2, 5, 4, generator=torch.Generator().manual_seed(3), dtype=dtype)


@pytest.fixture
def fresh(monkeypatch):
    """A process state in which nothing has been compiled or has failed to compile, restored afterwards."""
    monkeypatch.setattr(_fused, "_BROKEN", [])
    monkeypatch.setattr(_fused, "_COMPILED", {})
    monkeypatch.setattr(_fused, "_SEEN", {})


def test_setting_and_the_automatic_choice(monkeypatch):
    monkeypatch.setattr(_fused, "_BROKEN", [])
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.delenv("NTKIT_COMPILE", raising=False)
    assert not _fused.wanted(_fused.AUTO_WORK / 2)
    assert _fused.wanted(_fused.AUTO_WORK)
    monkeypatch.setenv("NTKIT_COMPILE", "0")
    assert not _fused.wanted(1e15)
    monkeypatch.setenv("NTKIT_COMPILE", "1")
    assert _fused.wanted(1.0)
    monkeypatch.delenv("NTKIT_COMPILE")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no compiler: "auto" never tries
    assert not _fused.wanted(1e15)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(_fused, "_BROKEN", ["RuntimeError: failed before"])  # failed once: never again
    assert not _fused.wanted(1e15)


def test_small_kernels_stay_eager_by_default(monkeypatch, fused_calls):
    monkeypatch.delenv("NTKIT_COMPILE", raising=False)
    _cnn().kernel(_images(3))
    assert fused_calls == []


@pytest.mark.parametrize("where", ["compile", "call"])
def test_a_failing_compiler_warns_once_and_gives_the_eager_values(monkeypatch, fresh, fused_calls, where):
    x = _images(4)
    monkeypatch.setenv("NTKIT_COMPILE", "0")
    eager = _cnn().kernel(x)

    def broken_compile(fn, **options):
        if where == "compile":  # torch.compile itself refuses (an unsupported platform)
            raise RuntimeError("no working C++ compiler")

        def compiled(*args):  # the compiler fails on the first call, as TorchInductor's C++ build would
            raise RuntimeError("no working C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv("NTKIT_COMPILE", "1")
    with pytest.warns(RuntimeWarning, match="could not compile its fused kernel loops .*no working C"):
        fallen_back = _cnn().kernel(x)
    assert fused_calls[0] is False
    # The failed attempt happens before any loop writes to the tile, so the values are the eager route's, bitwise.
    assert torch.equal(fallen_back.ntk, eager.ntk) and torch.equal(fallen_back.nngp, eager.nngp)
    fused_calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _cnn().kernel(x)  # no second warning, and no second attempt
    assert fused_calls == [False] * len(fused_calls) and torch.equal(again.ntk, eager.ntk)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_route_keeps_dtype_duplicates_and_agrees_with_eager(monkeypatch, fused_calls, dtype):
    x = _images(5, dtype)
    x[3] = x[1]  # a duplicated image: the pair (1, 3) has theta = 0 at every layer, as (1, 1) does
    monkeypatch.setenv("NTKIT_COMPILE", "0")
    eager = _cnn().kernel(x)
    monkeypatch.setenv("NTKIT_COMPILE", "1")
    fused = _cnn().kernel(x)
    assert fused_calls and all(fused_calls)
    tol = 1e-13 if dtype == torch.float64 else 1e-5  # both routes round the same formulas differently
    for name in ("nngp", "ntk"):
        got, want = getattr(fused, name), getattr(eager, name)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=0)
        # theta = 0 exactly for the duplicate: the off-diagonal pair equals the diagonal to rounding of the
        # final sums, far below what theta ~ 1e-8 (an unsnapped correlation 1 - eps) would change.
        torch.testing.assert_close(got[1, 3], got[1, 1], rtol=8 * torch.finfo(dtype).eps, atol=0)


@needs_compiler
def test_fused_cross_kernel_over_several_tiles_agrees_with_eager(monkeypatch, fused_calls):
    # K(x1, x2) with x1 != x2: tiles of 2 x 2 pairs (as many entries as 1600 per tensor), each replaying both
    # inputs' self-covariance tapes (and their cached variances).
    monkeypatch.setattr(kernel_driver, "_CACHE_ENTRIES", 1600)
    x1, x2 = _images(4), _images(6)[2:] * 0.7
    monkeypatch.setenv("NTKIT_COMPILE", "0")
    eager = _cnn().kernel(x1, x2)
    monkeypatch.setenv("NTKIT_COMPILE", "1")
    fused = _cnn().kernel(x1, x2)
    assert fused_calls and all(fused_calls) and len(fused_calls) == 4 * 4  # 4 tiles, 4 fused maps each
    torch.testing.assert_close(fused.ntk, eager.ntk, rtol=1e-13, atol=0)
    torch.testing.assert_close(fused.nngp, eager.nngp, rtol=1e-13, atol=0)


@needs_compiler
def test_more_tile_shapes_than_kept_loops_fall_back_per_call(monkeypatch, fresh, fused_calls):
    monkeypatch.setattr(_fused, "_RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(_fused, "_FULL", [])
    # images of a shape no other test uses (dynamo keeps its loops per function across torch.compile calls);
    # the first Conv (no NTK yet) takes the one loop allowed, the second Conv's map needs another
    x = torch.randn(5, 1, 6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    monkeypatch.setenv("NTKIT_COMPILE", "0")
    eager = _cnn().kernel(x)
    monkeypatch.setenv("NTKIT_COMPILE", "1")
    with pytest.warns(RuntimeWarning, match="keeps at most 1 fused loops per kernel map"):
        limited = _cnn().kernel(x)
    # those calls ran eagerly; the route itself stays on
    assert False in fused_calls and not _fused._BROKEN
    torch.testing.assert_close(limited.ntk, eager.ntk, rtol=1e-13, atol=0)
    fused_calls.clear()
    monkeypatch.setattr(_fused, "_RECOMPILE_LIMIT", 64)
    fused = _cnn().kernel(x)
    assert fused_calls and all(fused_calls)
    torch.testing.assert_close(fused.ntk, eager.ntk, rtol=1e-13, atol=0)
