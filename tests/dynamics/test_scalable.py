"""The t = inf closed forms by ntkit.linalg's solvers, against torch.linalg.solve on the dense kernels."""

import pytest
import torch

import ntkit
from ntkit import tiling

F64 = torch.float64


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(60, 3, generator=g, dtype=F64)
    xt = torch.randn(7, 3, generator=g, dtype=F64)
    y = torch.randn(60, 2, generator=g, dtype=F64)
    arch = ntkit.mlp(2, 32, b_std=0.3)
    return arch, x, xt, y


def _inv(k, rhs, diag_reg):
    return torch.linalg.solve(k + diag_reg * torch.diagonal(k).mean() * torch.eye(k.shape[0], dtype=F64), rhs)


def _posterior(kt, kk, ct, ck, kxx, y, diag_reg):
    """mean A y and K_xx + A K A^T - A K_Xx - K_xX A^T, A = C T^-1 (t = inf), by dense solves."""
    a = _inv(kt, ct.T, diag_reg).T
    cov = kxx + a @ kk @ a.T - a @ ck.T - ck @ a.T
    return a @ y, cov


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_gradient_descent_mse_at_infinity(data, solver):
    arch, x, xt, y = data
    t = arch.kernel(x, get="ntk").ntk
    tc = arch.kernel(xt, x, get="ntk").ntk
    f0, f0t = 0.1 * y, torch.ones(7, 2, dtype=F64)
    predict = ntkit.predict.gradient_descent_mse(t, y, diag_reg=1e-3, solver=solver)
    assert predict.solver == solver and predict.eigenvalues is None
    train, test = predict(None, f0, f0t, tc)
    torch.testing.assert_close(test, f0t + tc @ _inv(t, y - f0, 1e-3), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(train, y)
    with pytest.raises(ValueError, match="finite t"):
        predict(10.0, f0)
    assert ntkit.predict.gradient_descent_mse(t, y).solver == "eigh"  # auto keeps the spectrum where it fits


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_gp_inference_by_solvers(data, solver):
    arch, x, xt, y = data
    k = arch.kernel(x)
    c = arch.kernel(xt, x)
    kxx = arch.kernel(xt, get="nngp").nngp
    out = ntkit.predict.gp_inference(k, y, k_test_train=c, k_test_test=kxx, compute_cov=True, diag_reg=1e-3,
                                     solver=solver)  # fmt: skip
    assert out.solver == solver
    for kind in ("nngp", "ntk"):
        mean, cov = _posterior(getattr(k, kind), k.nngp, getattr(c, kind), c.nngp, kxx, y, 1e-3)
        torch.testing.assert_close(getattr(out, kind).mean, mean, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(getattr(out, kind).covariance, cov, rtol=1e-6, atol=1e-8)


def test_ensemble_falls_back_to_operators_when_nothing_fits(data, monkeypatch):
    arch, x, xt, y = data
    k, c = arch.kernel(x), arch.kernel(xt, x)
    kxx = arch.kernel(xt, get="nngp").nngp
    monkeypatch.setattr(
        tiling, "available_memory", lambda device: 40_000
    )  # blocks fit; 60 x 60 kernels do not
    predictor = ntkit.predict.gradient_descent_mse_ensemble(
        arch, x, y[:, 0], diag_reg=1e-3, memory_budget=2**16
    )
    assert predictor.solver == "cg" and predictor.k_train_train is None
    out = predictor(None, xt, compute_cov=True)
    assert out.solver == "cg"
    for kind in ("nngp", "ntk"):
        mean, cov = _posterior(getattr(k, kind), k.nngp, getattr(c, kind), c.nngp, kxx, y[:, :1], 1e-3)
        torch.testing.assert_close(getattr(out, kind).mean, mean[:, 0], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(getattr(out, kind).covariance, cov, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="finite t"):
        predictor(5.0, xt)
