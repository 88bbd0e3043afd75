"""NTKRegressor, NTKClassifier and InfiniteWidthKernel: sklearn's own checks, and dense routes computed here."""

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import ntkit
from ntkit.estimators import InfiniteWidthKernel, NTKClassifier, NTKRegressor
from ntkit.layers import Conv, Dense, Flatten, ReLU, Serial

RNG = np.random.default_rng(0)
X = RNG.normal(size=(80, 3))
Y = np.stack([np.sin(X[:, 0]) + X[:, 1], np.cos(X[:, 2])], axis=1)
XT = RNG.normal(size=(15, 3))


@pytest.mark.parametrize("estimator", [NTKRegressor(depth=1), NTKClassifier(depth=1)], ids=["reg", "clf"])
def test_check_estimator(estimator):
    failed = [r for r in check_estimator(estimator, on_fail=None) if r["status"] == "failed"]
    assert not failed, [(r["check_name"], repr(r["exception"])[:200]) for r in failed]


def _dense(arch, kind, x1, x2=None):
    x1 = torch.as_tensor(x1)
    x2 = None if x2 is None else torch.as_tensor(x2)
    return getattr(arch.kernel(x1, x2, get=kind), kind).numpy()


@pytest.mark.parametrize("solver", ["auto", "cholesky", "eigh", "cg", "nystrom"])
def test_regression_equals_dense_solve(solver):
    arch = ntkit.mlp(2, 64, b_std=0.2)
    k, c = _dense(arch, "ntk", X), _dense(arch, "ntk", XT, X)
    shift = 1e-3 * np.trace(k) / len(k)
    expected = c @ np.linalg.solve(k + shift * np.eye(len(k)), Y)
    model = NTKRegressor(arch, diag_reg=1e-3, solver=solver, n_centers=80).fit(X, Y)
    np.testing.assert_allclose(model.predict(XT), expected, rtol=1e-6, atol=1e-7)
    assert model.solver_ == ("cholesky" if solver == "auto" else solver)
    one = model.fit(X, Y[:, 0]).predict(XT)
    assert one.shape == (15,)
    out = model.predict(torch.as_tensor(XT))  # torch in, torch out
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_finite_time_is_the_ensemble_mean():
    arch = ntkit.mlp(1, 64, b_std=0.5)
    k, c = _dense(arch, "ntk", X), _dense(arch, "ntk", XT, X)
    t, eta, n_entries = 30.0, 1.0, Y.size
    e = np.eye(len(k)) - scipy.linalg.expm(-eta * t / n_entries * k)
    expected = c @ np.linalg.solve(k, e @ Y)
    model = NTKRegressor(arch, t=t, learning_rate=eta).fit(X, Y)
    np.testing.assert_allclose(model.predict(XT), expected, rtol=1e-6, atol=1e-8)


def test_posterior_matches_sklearn_gp_and_the_ensemble_formula():
    arch = ntkit.mlp(2, 64, b_std=0.3)
    gp = GaussianProcessRegressor(kernel=InfiniteWidthKernel(arch, get="nngp"), alpha=1e-13, optimizer=None)
    mean, std = gp.fit(X, Y[:, 0]).predict(XT, return_std=True)
    model = NTKRegressor(arch, kernel="nngp").fit(X, Y[:, 0])
    m2, s2 = model.predict(XT, return_std=True)
    np.testing.assert_allclose(m2, mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(s2, std, rtol=1e-4, atol=1e-6)
    # diag_reg > 0, NTK-GP: cov = K_xx + A K A^T - A K_Xx - K_xX A^T, A = T_xX (T + shift I)^-1
    k, t = _dense(arch, "nngp", X), _dense(arch, "ntk", X)
    kc, tc, kxx = _dense(arch, "nngp", XT, X), _dense(arch, "ntk", XT, X), _dense(arch, "nngp", XT)
    a = np.linalg.solve(t + 1e-2 * np.trace(t) / 80 * np.eye(80), tc.T).T
    cov = kxx + a @ k @ a.T - a @ kc.T - kc @ a.T
    mean, got = NTKRegressor(arch, diag_reg=1e-2).fit(X, Y).predict(XT, return_cov=True)
    np.testing.assert_allclose(got, cov, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mean, a @ Y, rtol=1e-6, atol=1e-9)
    ridge = 1e-3 * np.trace(t) / 80
    kr = KernelRidge(kernel=InfiniteWidthKernel(arch, get="ntk"), alpha=ridge).fit(X, Y)
    np.testing.assert_allclose(
        kr.predict(XT), NTKRegressor(arch, diag_reg=1e-3).fit(X, Y).predict(XT), rtol=1e-6, atol=1e-8
    )


def test_classifier_is_argmax_of_onehot_regression():
    labels = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, "a", "b")
    clf = NTKClassifier(diag_reg=1e-3).fit(X, labels)
    onehot = (labels[:, None] == np.array(["a", "b"])[None]).astype(float)
    scores = NTKRegressor(diag_reg=1e-3).fit(X, onehot).predict(XT)
    np.testing.assert_allclose(clf.decision_function(XT), scores[:, 1] - scores[:, 0], rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(clf.predict(XT), np.array(["a", "b"])[scores.argmax(1)])
    assert clf.score(X, labels) == 1.0


def test_pipeline_and_grid_search_over_architecture():
    pipe = make_pipeline(StandardScaler(), NTKRegressor(diag_reg=1e-3))
    grid = {
        "ntkregressor__depth": [1, 3],
        "ntkregressor__w_std": [1.0, 1.5],
        "ntkregressor__b_std": [0.0, 0.5],
    }
    search = GridSearchCV(pipe, grid, cv=3).fit(X, Y[:, 0])
    assert len(search.cv_results_["params"]) == 8 and search.best_score_ > 0.5
    archs = GridSearchCV(NTKRegressor(diag_reg=1e-3), {"arch": [ntkit.mlp(1, 8), ntkit.mlp(4, 8)]}, cv=2)
    assert archs.fit(X, Y[:, 0]).best_params_["arch"] is not None


def test_convolutional_architecture_with_input_shape():
    images = RNG.normal(size=(20, 1, 4, 4))
    y = images.mean(axis=(1, 2, 3))
    cnn = Serial(Conv(8, 3), ReLU(), Flatten(), Dense(1))
    model = NTKRegressor(cnn, diag_reg=1e-3, input_shape=(1, 4, 4)).fit(images.reshape(20, -1), y)
    k = _dense(cnn, "ntk", images)
    expected = _dense(cnn, "ntk", images[:5], images) @ np.linalg.solve(
        k + 1e-3 * np.trace(k) / 20 * np.eye(20), y
    )
    np.testing.assert_allclose(model.predict(images[:5].reshape(5, -1)), expected, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="input_shape"):
        NTKRegressor(cnn, input_shape=(2, 4, 4)).fit(images.reshape(20, -1), y)


def test_bad_parameters_are_refused_in_fit():
    for params, match in [
        ({"kernel": "rbf"}, "kernel"),
        ({"solver": "lu"}, "solver"),
        ({"t": -1.0}, "t must"),
        ({"t": 5.0, "solver": "cg"}, "finite t"),
        ({"arch": "mlp"}, "arch"),
    ]:
        model = NTKRegressor(**params)  # light constructor: nothing checked yet
        with pytest.raises((ValueError, TypeError), match=match):
            model.fit(X, Y)
    with pytest.raises(ValueError, match="NaN"):
        NTKRegressor().fit(X, np.where(Y > 0, np.nan, Y))


@pytest.mark.parametrize("kernel", ["nngp", "ntk"])
@pytest.mark.parametrize("solver", ["cg", "nystrom"])
def test_posterior_of_iterative_solvers_equals_the_dense_route(kernel, solver):
    arch = ntkit.mlp(2, 64, b_std=0.3)
    dense = NTKRegressor(arch, kernel=kernel, diag_reg=1e-2, solver="cholesky").fit(X, Y)
    mean, cov = dense.predict(XT, return_cov=True)
    # a small budget: the test points go through training_weights and the std in several batches
    tol = 1e-12 if solver == "cg" else 1e-10  # FALKON's system is K^2 + shift K: worse conditioned
    model = NTKRegressor(arch, kernel=kernel, diag_reg=1e-2, solver=solver, n_centers=80, tol=tol,
                         memory_budget=2**15).fit(X, Y)  # fmt: skip
    m2, c2 = model.predict(XT, return_cov=True)
    np.testing.assert_allclose(m2, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c2, cov, rtol=1e-7, atol=1e-10)
    _, std = model.predict(XT, return_std=True)
    np.testing.assert_allclose(std, np.sqrt(np.diag(cov)), rtol=1e-6, atol=1e-9)


def test_posterior_of_nystrom_with_fewer_centres_is_that_of_its_own_predictor():
    arch = ntkit.mlp(2, 64, b_std=0.3)
    model = NTKRegressor(arch, diag_reg=1e-2, solver="nystrom", n_centers=30, tol=1e-10).fit(X, Y)
    s = model.solution_.support.numpy()
    t, k = _dense(arch, "ntk", X), _dense(arch, "nngp", X)
    tc, kc, kxx = _dense(arch, "ntk", XT, X), _dense(arch, "nngp", XT, X), _dense(arch, "nngp", XT)
    shift = 1e-2 * np.trace(t) / 80
    h = t[:, s].T @ t[:, s] + shift * t[np.ix_(s, s)]
    a = tc[:, s] @ np.linalg.solve(h, t[:, s].T)  # the Nystrom predictor's map y -> f(x), written out
    mean, cov = model.predict(XT, return_cov=True)
    np.testing.assert_allclose(mean, a @ Y, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(cov, kxx + a @ k @ a.T - a @ kc.T - kc @ a.T, rtol=1e-6, atol=1e-9)
    assert not np.allclose(cov, NTKRegressor(arch, diag_reg=1e-2).fit(X, Y).predict(XT, return_cov=True)[1])
