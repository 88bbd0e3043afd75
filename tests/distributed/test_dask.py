"""Kernels as dask arrays on a LocalCluster, and CG through them, against arch.kernel and a dense solve."""

import numpy as np
import pytest
import torch
from dask import distributed  # installed by the test extra (pyproject.toml), as .ci/run does

import ntkit
from ntkit import linalg
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
