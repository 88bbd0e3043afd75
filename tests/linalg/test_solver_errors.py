"""Bad input to the solvers is refused before the O(n^2) work, naming the argument (issue 10, section 4)."""

import numpy as np
import pytest
import torch

import ntkit
from ntkit import linalg


def _kernel(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    return x, y, ntkit.mlp(1, 32).kernel(x, get="ntk").ntk


@pytest.mark.parametrize("method", ["auto", "cholesky", "eigh", "cg", "nystrom"])
@pytest.mark.parametrize("wrap", [False, True])
def test_negative_diagonal_is_refused_by_every_route(method, wrap):
    # K[3, 3] < 0 is impossible for a PSD kernel (e_3^T K e_3 >= 0). Before, eigh only warned and clipped, and
    # the other routes failed later with a message about their own factor rather than the kernel.
    _, y, k = _kernel()
    k = k.clone()
    k[3, 3] = -0.5 * k.diagonal().max()
    kernel = linalg.DenseKernel(k) if wrap else k
    with pytest.raises(
        ValueError, match=r"kernel is not positive semi-definite: its diagonal entry K\[3, 3\]"
    ):
        linalg.solve(kernel, y, diag_reg=1e-2, method=method)


def test_negative_diagonal_is_refused_by_training_weights():
    _, y, k = _kernel()
    sol = linalg.solve(k, y, diag_reg=1e-2, method="cholesky")
    bad = k.clone()
    bad[0, 0] = -1.0
    with pytest.raises(ValueError, match=r"diagonal entry K\[0, 0\]"):
        linalg.training_weights(linalg.DenseKernel(bad), sol, k[:2])


def test_diagonal_rounding_below_zero_is_accepted():
    # A PSD kernel with an exactly zero row/column (a zero feature vector under a bias-free kernel, say) can come
    # out with K_ii = -1e-18 after rounding; that is not a reason to refuse it. Compared with the dense solve.
    g = torch.Generator().manual_seed(1)
    f = torch.randn(20, 5, generator=g, dtype=torch.float64)
    f[7] = 0.0
    k = f @ f.T
    k[7, 7] = -1e-18 * float(k.diagonal().max())
    y = torch.randn(20, generator=g, dtype=torch.float64)
    sol = linalg.solve(k, y, diag_reg=1e-3, method="cholesky")
    shift = 1e-3 * float(k.diagonal().mean())
    ref = torch.linalg.solve(k + shift * torch.eye(20, dtype=k.dtype), y)
    # cond(K + shift I) <= (max eig + shift) / shift ~ 1e3 * n: 1e-9 leaves room for that times 1e-16.
    torch.testing.assert_close(sol.coef, ref, rtol=1e-9, atol=1e-9)


def test_nonfinite_diagonal_of_an_operator_is_refused():
    _, y, k = _kernel()
    k = k.clone()
    op = linalg.DenseKernel(k)
    op.matrix[2, 2] = float("inf")  # after the constructor's finiteness check, as a broken operator would
    with pytest.raises(ValueError, match="kernel has NaN or infinite diagonal"):
        linalg.solve(op, y, diag_reg=1e-2, method="cg")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda a, x: ntkit.distributed.kernel(a, x[:, 0]), ValueError, r"x1 must have shape \(n, \.\.\.\)"),
        (lambda a, x: ntkit.distributed.kernel(a, x, x[:, :2]), ValueError, "x1 and x2 must have the same"),
        (lambda a, x: ntkit.distributed.kernel(a, x, store=5), TypeError, "store must be a directory path"),
    ],
)
def test_distributed_kernel_checks_shapes_before_building_the_graph(call, error, match):
    # Dask evaluates lazily: before, these built a graph without complaint and failed (or not) inside a worker.
    pytest.importorskip("dask.array")
    import ntkit.distributed  # the lambdas reach it as an attribute of ntkit

    x, _, _ = _kernel()
    with pytest.raises(error, match=match):
        call(ntkit.mlp(1, 32), np.asarray(x))
