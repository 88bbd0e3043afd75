"""Kernel operators and solvers against independent dense routes (arch.kernel, empirical_ntk, torch.linalg.solve)."""

import warnings

import numpy as np
import pytest
import torch

import ntkit
from ntkit import linalg, tiling
from ntkit.layers import Conv, Dense, Flatten, ReLU, Serial

F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 4, generator=g, dtype=F64)
    y = torch.randn(150, 2, generator=g, dtype=F64)
    arch = ntkit.mlp(2, 64, b_std=0.2)
    k = arch.kernel(x, get=("nngp", "ntk"))
    return arch, x, y, k


def _reference(k, y, diag_reg):
    shift = diag_reg * torch.diagonal(k).mean()
    return torch.linalg.solve(k + shift * torch.eye(k.shape[0], dtype=k.dtype), y)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("cache", [False, True])
def test_arch_operator_matches_dense_kernel(problem, get, cache):
    arch, x, _, k = problem
    dense = getattr(k, get)
    op = linalg.ArchKernel(arch, x, get=get, memory_budget=2**19, cache=cache)
    assert op.block_size < x.shape[0]  # several blocks, mirrored from the upper triangle
    v = torch.randn(150, 3, dtype=F64)
    for _ in range(2):  # second product from the cache when cache=True
        torch.testing.assert_close(op @ v, dense @ v, rtol=1e-12, atol=1e-12)
    assert (op.cached_bytes > 0) == cache
    torch.testing.assert_close(op.diagonal(), torch.diagonal(dense), rtol=1e-13, atol=0)
    torch.testing.assert_close(op.columns([0, 17, 149]), dense[:, [0, 17, 149]], rtol=1e-13, atol=0)
    xt = x[:20] + 0.1
    cross = op.cross(xt)
    torch.testing.assert_close(
        cross @ v, getattr(arch.kernel(xt, x, get=get), get) @ v, rtol=1e-12, atol=1e-12
    )


def test_conv_and_empirical_operators():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(12, 2, 4, 4, generator=g, dtype=F64)
    cnn = Serial(Conv(8, 3), ReLU(), Flatten(), Dense(1))
    op = linalg.ArchKernel(cnn, images, memory_budget=2**15)
    torch.testing.assert_close(op.to_dense(), cnn.kernel(images, get="ntk").ntk, rtol=1e-12, atol=1e-14)
    net = ntkit.mlp(1, 16).build(4, seed=0, dtype=F64)
    x = torch.randn(40, 4, generator=g, dtype=F64)
    emp = linalg.EmpiricalKernel(net, x, memory_budget=2**15)
    assert emp.block_size < 40
    torch.testing.assert_close(emp.to_dense(), ntkit.empirical_ntk(net, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "preconditioner"),
    [("cholesky", None), ("eigh", None), ("cg", "nystrom"), ("cg", "pivoted-cholesky"), ("cg", None)],
)
def test_solvers_equal_dense_solve(problem, method, preconditioner):
    arch, x, y, k = problem
    op = linalg.ArchKernel(arch, x, memory_budget=2**19)
    # CG's coefficient error is at most cond(K + shift I) ~ 2e3 times its relative residual: ask for 1e-12
    tol = 1e-12 if method == "cg" else None
    sol = linalg.solve(
        op, y, diag_reg=1e-2, method=method, preconditioner=preconditioner, rank=40, max_iter=500, tol=tol
    )
    assert sol.method == method and sol.coef.dtype == F64
    torch.testing.assert_close(sol.coef, _reference(k.ntk, y, 1e-2), rtol=1e-7, atol=1e-7)
    if method == "cg":
        assert sol.residual <= 1e-12
    one = linalg.solve(
        k.ntk.numpy(), y[:, 0].numpy(), diag_reg=1e-2, method=method, rank=40, max_iter=500, tol=tol
    )
    assert one.coef.shape == (150,)  # 1-D labels stay 1-D; numpy in, torch out
    torch.testing.assert_close(one.coef, _reference(k.ntk, y[:, :1], 1e-2)[:, 0], rtol=1e-7, atol=1e-7)


def test_preconditioner_cuts_iterations(problem):
    _, _, y, k = problem
    plain = linalg.solve(k.ntk, y, diag_reg=1e-3, method="cg", preconditioner=None, max_iter=2000)
    pre = linalg.solve(k.ntk, y, diag_reg=1e-3, method="cg", preconditioner="pivoted-cholesky", rank=60)
    assert pre.iterations < plain.iterations / 2


def test_nystrom_matches_normal_equations_and_exact_at_full_rank(problem):
    arch, x, y, k = problem
    t = k.ntk
    op = linalg.ArchKernel(arch, x, memory_budget=2**19)
    full = linalg.solve(op, y, diag_reg=1e-2, method="nystrom", n_centers=150)
    torch.testing.assert_close(full.coef, _reference(t, y, 1e-2)[full.support], rtol=1e-7, atol=1e-7)
    sol = linalg.solve(op, y, diag_reg=1e-2, method="nystrom", n_centers=40, seed=3)
    s = sol.support
    shift = 1e-2 * torch.diagonal(t).mean()
    knm, kmm = t[:, s], t[s][:, s]
    beta = torch.linalg.solve(knm.T @ knm + shift * kmm, knm.T @ y)
    torch.testing.assert_close(sol.coef, beta, rtol=1e-6, atol=1e-7)
    xt = x[:10] * 0.5
    torch.testing.assert_close(
        sol.predict(op.cross(xt)), arch.kernel(xt, x[s], get="ntk").ntk @ beta, rtol=1e-6, atol=1e-7
    )


def test_pivoted_cholesky_full_rank_reproduces_kernel(problem):
    _, _, _, k = problem
    a = k.ntk[:40, :40]
    factor = linalg.pivoted_cholesky(linalg.DenseKernel(a), 40)
    torch.testing.assert_close(factor @ factor.T, a, rtol=1e-9, atol=1e-9)


def test_nonconvergence_raises_or_warns_with_residual(problem):
    _, _, y, k = problem
    with pytest.raises(linalg.ConvergenceError, match="relative residual"):
        linalg.solve(k.ntk, y, diag_reg=1e-6, method="cg", preconditioner=None, max_iter=3)
    with pytest.warns(linalg.ConvergenceWarning, match="did not converge"):
        sol = linalg.solve(
            k.ntk, y, diag_reg=1e-6, method="cg", preconditioner=None, max_iter=3, on_nonconvergence="warn"
        )
    assert sol.residual > 1e-8


def test_singular_and_bad_inputs():
    x = torch.randn(10, 3, dtype=F64)
    x = torch.cat([x, x])  # duplicates: a singular kernel
    k = ntkit.mlp(1, 8).kernel(x, get="ntk").ntk
    y = torch.randn(20, dtype=F64)
    with pytest.raises(ValueError, match="diag_reg"):
        linalg.solve(k, y, method="cholesky")
    with pytest.raises(ValueError, match="y must have shape"):
        linalg.solve(k, y[:5])
    with pytest.raises(ValueError, match="NaN"):
        linalg.solve(k, y * float("nan"))
    with pytest.raises(ValueError, match="method"):
        linalg.solve(k, y, method="lu")
    with pytest.raises(tiling.MemoryBudgetError, match="memory_budget"):
        linalg.ArchKernel(ntkit.mlp(1, 8), x, memory_budget=100)


def test_float32_and_auto_falls_back_to_cg(problem, monkeypatch):
    arch, x, y, k = problem
    sol = linalg.solve(k.ntk.float(), y.float(), diag_reg=1e-2, method="cg")
    assert sol.coef.dtype == torch.float32
    torch.testing.assert_close(sol.coef.double(), _reference(k.ntk, y, 1e-2), rtol=1e-3, atol=1e-3)
    assert linalg.solve(k.ntk, y, diag_reg=1e-2).method == "cholesky"
    monkeypatch.setattr(tiling, "available_memory", lambda device: 400_000)  # blocks fit, dense does not
    op = linalg.ArchKernel(arch, x, memory_budget=2**19)
    sol = linalg.solve(op, y, diag_reg=1e-2)
    assert sol.method == "cg"
    torch.testing.assert_close(sol.coef, _reference(k.ntk, y, 1e-2), rtol=1e-7, atol=1e-7)


def test_progress_bar_only_when_asked(problem, capsys):
    _, _, y, k = problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linalg.solve(k.ntk, y, diag_reg=1e-2, method="cg", progress=False)
    assert "conjugate gradients" not in capsys.readouterr().err
    linalg.solve(k.ntk, y, diag_reg=1e-2, method="cg", progress=True)
    assert "conjugate gradients" in capsys.readouterr().err
    assert np.isfinite(float(k.ntk.sum()))


@pytest.mark.parametrize("method", ["cholesky", "eigh", "cg", "nystrom"])
def test_training_weights_are_the_map_from_labels_to_predictions(problem, method):
    arch, x, y, k = problem
    op = linalg.ArchKernel(arch, x, memory_budget=2**19)
    sol = linalg.solve(op, y, diag_reg=1e-2, method=method, rank=40, n_centers=150, tol=1e-11)
    xt = x[:12] * 0.7
    c = arch.kernel(xt, x, get="ntk").ntk
    w = linalg.training_weights(op, sol, c, tol=1e-11)
    expected = _reference(k.ntk, c.T, 1e-2)  # (K + shift I)^-1 K(X, x), dense
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(w.T @ y, sol.predict(op.cross(xt)), rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="k_test_train must have shape"):
        linalg.training_weights(op, sol, c[:, :10])
    with pytest.raises(TypeError, match="solution"):
        linalg.training_weights(op, sol.coef, c)
