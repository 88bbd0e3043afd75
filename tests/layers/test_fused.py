"""The fused route of the spatial recursion (layers/_fused.py): when it is taken, and that nothing is lost if
compiling fails. Its values are checked against the brute-force recursion in test_spatial_reference.py."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from ntkit.layers import Conv, Dense, GlobalAvgPool, ReLU, Serial, _fused

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


@pytest.fixture
def calls(monkeypatch):
    """The outcomes (True: ran fused) of every attempt to run a fused loop."""
    outcomes: list[bool] = []
    run = _fused.run

    def counting_run(fn, *args):
        done, result = run(fn, *args)
        outcomes.append(done)
        return done, result

    monkeypatch.setattr(_fused, "run", counting_run)
    return outcomes


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


def test_small_kernels_stay_eager_by_default(monkeypatch, calls):
    monkeypatch.delenv("NTKIT_COMPILE", raising=False)
    _cnn().kernel(_images(3))
    assert calls == []


def test_a_failing_compiler_warns_once_and_gives_the_eager_values(monkeypatch, fresh, calls):
    x = _images(4)
    monkeypatch.setenv("NTKIT_COMPILE", "0")
    eager = _cnn().kernel(x)

    def broken_compile(fn, **options):
        def compiled(*args):
            raise RuntimeError("no working C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv("NTKIT_COMPILE", "1")
    with pytest.warns(RuntimeWarning, match="could not compile its fused kernel loops .*no working C"):
        fallen_back = _cnn().kernel(x)
    assert calls[0] is False
    # The failed attempt happens before any loop writes to the tile, so the values are the eager route's, bitwise.
    assert torch.equal(fallen_back.ntk, eager.ntk) and torch.equal(fallen_back.nngp, eager.nngp)
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _cnn().kernel(x)  # no second warning, and no second attempt
    assert calls == [False] * len(calls) and torch.equal(again.ntk, eager.ntk)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_route_keeps_dtype_duplicates_and_agrees_with_eager(monkeypatch, calls, dtype):
    x = _images(5, dtype)
    x[3] = x[1]  # a duplicated image: the pair (1, 3) has theta = 0 at every layer, as (1, 1) does
    monkeypatch.setenv("NTKIT_COMPILE", "0")
    eager = _cnn().kernel(x)
    monkeypatch.setenv("NTKIT_COMPILE", "1")
    fused = _cnn().kernel(x)
    assert calls and all(calls)
    tol = 1e-13 if dtype == torch.float64 else 1e-5  # both routes round the same formulas differently
    for name in ("nngp", "ntk"):
        got, want = getattr(fused, name), getattr(eager, name)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=0)
        # theta = 0 exactly for the duplicate: the off-diagonal pair equals the diagonal to rounding of the
        # final sums, far below what theta ~ 1e-8 (an unsnapped correlation 1 - eps) would change.
        torch.testing.assert_close(got[1, 3], got[1, 1], rtol=8 * torch.finfo(dtype).eps, atol=0)
