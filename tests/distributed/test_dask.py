"""Kernels as dask arrays on a LocalCluster, and CG through them, against arch.kernel and a dense solve."""

import numpy as np
import pytest
import torch
from dask import distributed  # installed by the test extra (pyproject.toml), as .ci/run does

import ntkit
from ntkit import linalg, tiling
from ntkit.distributed import kernel


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_dask_kernel_and_cg_on_a_cluster(client):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(70, 3, generator=g, dtype=torch.float64)
    xt = torch.randn(9, 3, generator=g, dtype=torch.float64)
    y = torch.randn(70, generator=g, dtype=torch.float64)
    arch = ntkit.mlp(2, 32, b_std=0.2)
    k = arch.kernel(x, get="ntk").ntk
    array = kernel(arch, x, chunk_size=32)
    assert array.numblocks == (3, 3)
    # only the 6 blocks on and above the diagonal run the recursion; the other 3 are transposes
    names = {k if isinstance(k, str) else k[0] for k in dict(array.__dask_graph__())}
    assert sum(name.startswith("_block-") for name in names) == 6
    np.testing.assert_allclose(array.compute(), k.numpy(), rtol=1e-13, atol=1e-14)
    cross = kernel(arch, xt, x, get="nngp", chunk_size=32).compute()
    np.testing.assert_allclose(cross, arch.kernel(xt, x, get="nngp").nngp.numpy(), rtol=1e-13, atol=1e-14)
    sol = linalg.solve(array.persist(), y, diag_reg=1e-2, method="cg", rank=20, tol=1e-12)
    expected = torch.linalg.solve(k + 1e-2 * k.diagonal().mean() * torch.eye(70, dtype=torch.float64), y)
    torch.testing.assert_close(sol.coef, expected, rtol=1e-7, atol=1e-8)
    net = ntkit.mlp(1, 16).build(3, seed=0, dtype=torch.float64)
    np.testing.assert_allclose(
        kernel(net, x[:40], chunk_size=16).compute(),
        ntkit.empirical_ntk(net, x[:40]).numpy(),
        rtol=1e-10,
        atol=1e-12,
    )


class Counting:
    """An architecture that counts its kernel calls and, past `fail_after` of them, fails (a lost cluster)."""

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


def test_interrupted_computation_resumes_from_the_store(tmp_path):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    arch = ntkit.mlp(2, 32, b_std=0.2)
    expected = kernel(arch, x, chunk_size=16).compute(scheduler="synchronous")  # 4 x 4 blocks, 10 computed
    store = tmp_path / "k"
    flaky = Counting(arch, fail_after=4)
    with pytest.raises(RuntimeError, match="interrupted"):
        kernel(flaky, x, chunk_size=16, store=store).compute(scheduler="synchronous")
    assert len(list(store.glob("block_*.crc32"))) == 4  # what finished before the failure is on disk
    again = Counting(arch)
    got = kernel(again, x, chunk_size=16, store=store).compute(scheduler="synchronous")
    assert again.calls == 10 - 4  # only the blocks that were missing
    np.testing.assert_array_equal(got, expected)
    third = Counting(arch)
    np.testing.assert_array_equal(kernel(third, x, chunk_size=16, store=store).compute(), expected)
    assert third.calls == 0
    with pytest.raises(tiling.StoreError, match="different computation"):
        kernel(arch, x, chunk_size=8, store=store)
    # one flipped entry in a finished block is reported with its file, never returned
    block = store / "block_0_2.npy"
    damaged = np.load(block)
    damaged[3, 5] = np.nextafter(damaged[3, 5], np.inf)
    np.save(block, damaged)
    with pytest.raises(tiling.StoreError, match=r"block_0_2\.npy does not match its checksum"):
        kernel(arch, x, chunk_size=16, store=store).compute(scheduler="synchronous")


def test_linalg_wraps_a_dask_array_without_importing_distributed():
    # The dependency runs one way (distributed -> linalg): as_operator must recognise a dask array by itself,
    # so a fresh interpreter that only imports linalg never loads ntkit.distributed.
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, dask.array as da, ntkit.linalg as la\n"
        "op = la.as_operator(da.from_array(np.eye(4), chunks=2))\n"
        "assert type(op).__name__ == 'DaskKernel', type(op)\n"
        "assert float(op.matmul(np.ones(4)).sum()) == 4.0\n"
        "assert 'ntkit.distributed' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
