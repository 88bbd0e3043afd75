"""Kernel operators whose blocks live on disk (store=): interrupted runs resume, damaged blocks are refused."""

import numpy as np
import pytest
import torch

import ntkit
from ntkit import linalg, tiling

F64 = torch.float64
BUDGET = 2**16  # blocks of 32 x 32: 100 points make 4 row panels, 10 blocks on and above the diagonal


class Counting:
    """An architecture that counts its kernel calls and, past `fail_after` of them, fails (a lost worker)."""

    def __init__(self, arch, fail_after=None):
        self.arch = arch
        self.calls = 0
        self.fail_after = fail_after

    def kernel(self, x1, x2=None, **kwargs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("interrupted")
        return self.arch.kernel(x1, x2, **kwargs)

    def fingerprint(self):
        return self.arch.fingerprint()


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(100, 3, generator=g, dtype=F64)
    v = torch.randn(100, 2, generator=g, dtype=F64)
    return ntkit.mlp(2, 32, b_std=0.3), x, v


def test_interrupted_run_resumes_from_the_finished_blocks(problem, tmp_path):
    arch, x, v = problem
    store = tmp_path / "k"
    expected = linalg.ArchKernel(arch, x, memory_budget=BUDGET, cache=False) @ v  # uninterrupted, in memory
    flaky = Counting(arch, fail_after=1 + 5)  # the construction's probe, then 5 blocks
    op = linalg.ArchKernel(flaky, x, memory_budget=BUDGET, store=store)
    assert op.block_size == 32
    with pytest.raises(RuntimeError, match="interrupted"):
        op @ v
    assert int(np.load(store / "done.npy").sum()) == 5  # kept, with their checksums

    again = Counting(arch)
    op = linalg.ArchKernel(again, x, memory_budget=BUDGET, store=store)
    got = op @ v
    assert again.calls == 1 + 5  # the probe and the 5 blocks still missing, not all 10
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    assert bool(np.load(store / "done.npy").all())
    torch.testing.assert_close(op @ v, expected, rtol=1e-13, atol=1e-13)  # later products: reads only
    assert again.calls == 6
    # a new operator on the complete store computes nothing, and the dense matrix is the kernel's
    third = Counting(arch)
    dense = linalg.ArchKernel(third, x, memory_budget=BUDGET, store=store).to_dense()
    assert third.calls == 1
    torch.testing.assert_close(dense, arch.kernel(x, get="ntk").ntk, rtol=1e-13, atol=1e-14)


def test_cg_on_a_stored_kernel_equals_the_dense_solve(problem, tmp_path):
    arch, x, v = problem
    k = arch.kernel(x, get="ntk").ntk
    op = linalg.ArchKernel(arch, x, memory_budget=BUDGET, store=tmp_path / "k")
    sol = linalg.solve(op, v, diag_reg=1e-2, method="cg", rank=20, tol=1e-12)
    expected = torch.linalg.solve(k + 1e-2 * k.diagonal().mean() * torch.eye(100, dtype=F64), v)
    torch.testing.assert_close(sol.coef, expected, rtol=1e-7, atol=1e-8)
    assert op.cached_bytes == 0  # the blocks are on disk, not held in memory


def test_damaged_or_foreign_store_is_refused(problem, tmp_path):
    arch, x, v = problem
    store = tmp_path / "k"
    linalg.ArchKernel(arch, x, memory_budget=BUDGET, store=store) @ v
    with pytest.raises(tiling.StoreError, match="holds a different computation"):
        linalg.ArchKernel(arch, x + 1.0, memory_budget=BUDGET, store=store) @ v
    with pytest.raises(tiling.StoreError, match="holds a different computation"):
        linalg.ArchKernel(arch, x, get="nngp", memory_budget=BUDGET, store=store) @ v
    stored = np.load(store / "kernel.npy", mmap_mode="r+")
    stored[40, 70] += 1e-9  # one entry of a finished block: too small to spot by eye, not by its checksum
    stored.flush()
    del stored
    with pytest.raises(tiling.StoreError, match=r"damaged: block .*kernel\.npy"):
        linalg.ArchKernel(arch, x, memory_budget=BUDGET, store=store) @ v


def test_empirical_kernel_store_and_bad_arguments(tmp_path):
    g = torch.Generator().manual_seed(3)
    net = ntkit.mlp(1, 8).build(3, seed=0, dtype=F64)
    x = torch.randn(40, 3, generator=g, dtype=F64)
    op = linalg.EmpiricalKernel(net, x, memory_budget=2**15, store=tmp_path / "e")
    assert op.block_size < 40
    torch.testing.assert_close(op.to_dense(), ntkit.empirical_ntk(net, x), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        next(net.parameters()).add_(0.1)  # another model: its parameters key the store
    with pytest.raises(tiling.StoreError, match="different computation"):
        linalg.EmpiricalKernel(net, x, memory_budget=2**15, store=tmp_path / "e").to_dense()
    arch = ntkit.mlp(1, 8)
    with pytest.raises(ValueError, match="cache"):
        linalg.ArchKernel(arch, x, cache=True, store=tmp_path / "c")
    with pytest.raises(TypeError, match="store must be"):
        linalg.ArchKernel(arch, x, store=3)

    class NoFingerprint:
        def kernel(self, *args, **kwargs):
            return arch.kernel(*args, **kwargs)

    with pytest.raises(TypeError, match="fingerprint"):
        linalg.ArchKernel(NoFingerprint(), x, store=tmp_path / "n")
