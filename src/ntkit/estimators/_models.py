"""NTKRegressor and NTKClassifier: kernel regression with an architecture's exact NNGP/NTK, as sklearn estimators.

Model. With K the chosen kernel ("ntk": every layer trained; "nngp": the last layer only) on the training rows
X and shift = diag_reg * trace(K(X, X)) / n:
- t=None: kernel regression, f(x) = K(x, X) (K(X, X) + shift I)^+ y, the mean prediction of infinitely wide
  networks trained to convergence on squared loss (Jacot et al. 2018; Lee et al. 2019; the pseudo-inverse when
  diag_reg=0);
- finite t: the ensemble mean after t gradient steps of size learning_rate on the mean squared loss,
  f_t(x) = K(x, X) K^-1 (I - exp(-learning_rate K t / N)) y (`ntkit.predict.gradient_descent_mse`).
`predict(X, return_std=True / return_cov=True)` adds the posterior of the infinite ensemble
(`ntkit.predict.gp_inference` at t=None, `gradient_descent_mse_ensemble` at finite t): for "nngp" the exact GP
posterior of the NNGP prior, for "ntk" the NTK-GP.

Inputs. X is the usual 2-D (n_samples, n_features) array (numpy or torch). For convolutional architectures set
`input_shape=(C, H, W)` (or (C, L)): each row is reshaped to it (row-major, as `x.reshape(n, -1)` flattens
images), so the architecture sees (n, C, H, W). Results are numpy arrays, or torch tensors when X is one.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import linalg
from .._validation import HasKernel
from ..layers import mlp

__all__ = ["NTKClassifier", "NTKRegressor"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


Prediction: TypeAlias = np.ndarray | torch.Tensor
"""Outputs as the inputs came: a torch.Tensor for a tensor X, else a float64 numpy array."""


def _to_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


class _NTKBase(BaseEstimator):
    def __init__(
        self,
        arch: HasKernel | None = None,
        *,
        kernel: str = "ntk",
        t: float | None = None,
        learning_rate: float = 1.0,
        diag_reg: float = 0.0,
        solver: str = "auto",
        n_centers: int | None = None,
        tol: float | None = None,
        memory_budget: int | None = None,
        device: str | None = None,
        dtype: str = "float64",
        input_shape: tuple[int, ...] | None = None,
        depth: int = 2,
        w_std: float = 1.0,
        b_std: float = 0.1,
    ) -> None:
        self.arch = arch
        self.kernel = kernel
        self.t = t
        self.learning_rate = learning_rate
        self.diag_reg = diag_reg
        self.solver = solver
        self.n_centers = n_centers
        self.tol = tol
        self.memory_budget = memory_budget
        self.device = device
        self.dtype = dtype
        self.input_shape = input_shape
        self.depth = depth
        self.w_std = w_std
        self.b_std = b_std

    # ---- validation (in fit, as sklearn asks) ------------------------------------------------------------
    def _check_params(self) -> None:
        if self.kernel not in ("ntk", "nngp"):
            raise ValueError(f"kernel must be 'ntk' or 'nngp', got {self.kernel!r}")
        if self.solver not in linalg.METHODS:
            raise ValueError(f"solver must be one of {linalg.METHODS}, got {self.solver!r}")
        if self.t is not None and not (isinstance(self.t, (int, float)) and self.t >= 0):
            raise ValueError(f"t must be None (t = inf) or a number >= 0, got {self.t!r}")
        if not (isinstance(self.diag_reg, (int, float)) and self.diag_reg >= 0):
            raise ValueError(f"diag_reg must be a number >= 0, got {self.diag_reg!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.dtype not in _DTYPES and self.dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        if self.t is not None and self.solver in ("cg", "nystrom", "cholesky"):
            raise ValueError(
                f"finite t needs the eigendecomposition: solver must be 'auto' or 'eigh', not {self.solver!r}"
            )

    def _arch(self) -> Any:
        if self.arch is not None:
            if not callable(getattr(self.arch, "kernel", None)):
                raise TypeError(
                    f"arch must be an ntkit architecture (with .kernel), got {type(self.arch).__name__}"
                )
            return self.arch
        return mlp(self.depth, 512, w_std=self.w_std, b_std=self.b_std)

    def _torch_dtype(self) -> torch.dtype:
        return self.dtype if isinstance(self.dtype, torch.dtype) else _DTYPES[self.dtype]

    def _inputs(self, X: Any, reset: bool, validated: np.ndarray | None = None) -> torch.Tensor:
        if validated is None:
            x = validate_data(self, _to_numpy(X), reset=reset, dtype=[np.float64, np.float32])
        else:
            x = validated
        xt = torch.tensor(np.asarray(x), dtype=self._torch_dtype(), device=self.device)
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if int(np.prod(shape)) != xt.shape[1]:
                raise ValueError(
                    f"input_shape={shape} holds {int(np.prod(shape))} values per row but X has {xt.shape[1]} features"
                )
            xt = xt.reshape(xt.shape[0], *shape)
        return xt

    def _k(self, x1: torch.Tensor, x2: torch.Tensor | None, get: str | None = None) -> torch.Tensor:
        extra = {} if self.memory_budget is None else {"memory_budget": self.memory_budget}
        kind = get or self.kernel
        return getattr(self.arch_.kernel(x1, x2, get=kind, **extra), kind)

    # ---- fit / predict -----------------------------------------------------------------------------------
    def _fit_targets(self, X: Any, y: torch.Tensor) -> None:
        """Fit the regression of targets y (n, k) torch on X (validated as `self._x`)."""
        x = self._x
        n = x.shape[0]
        self.arch_ = self._arch()
        method = self.solver
        if method == "auto":
            fits = n <= linalg.DENSE_MAX_N and linalg.dense_fits(n, x.dtype, x.device, 2.0)
            method = ("eigh" if self.diag_reg == 0 or self.t is not None else "cholesky") if fits else "cg"
        self.solver_ = method
        self._predictor = None
        if self.t is not None:
            if method != "eigh":
                raise ValueError(
                    f"finite t={self.t} needs the dense eigendecomposition, which does not fit for n={n}"
                )
            from ..predict import gradient_descent_mse

            k = self._k(x, None)
            self._predictor = gradient_descent_mse(
                k, y, learning_rate=self.learning_rate, diag_reg=self.diag_reg, solver="eigh"
            )
            self.solution_ = None
            return
        if method in ("cholesky", "eigh"):
            kernel = self._k(x, None)
        else:
            kernel = linalg.ArchKernel(self.arch_, x, get=self.kernel, memory_budget=self.memory_budget)
        self.solution_ = linalg.solve(
            kernel, y, diag_reg=self.diag_reg, method=method, n_centers=self.n_centers, tol=self.tol
        )

    def _outputs(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "arch_")
        x = self._inputs(X, reset=False)
        if self._predictor is not None:
            _, test = self._predictor(float(self.t), 0.0, None, self._k(x, self._x))
            return test
        sol = self.solution_
        if sol.support is None:
            if x.shape[0] * self._x.shape[0] * x.element_size() <= 2**28:
                return self._k(x, self._x) @ sol.coef
            return sol.predict(
                linalg.ArchKernel(
                    self.arch_, x, self._x, get=self.kernel, memory_budget=self.memory_budget, cache=False
                )
            )
        return self._k(x, self._x[sol.support.to(x.device)]) @ sol.coef

    @staticmethod
    def _out(value: torch.Tensor, like: Any) -> Any:
        if isinstance(like, torch.Tensor):
            return value
        return value.detach().cpu().numpy().astype(np.float64)


class NTKRegressor(RegressorMixin, _NTKBase):
    """Kernel regression with the exact infinite-width NTK (or NNGP) of an ntkit architecture.

    Parameters:
        arch: any ntkit architecture (e.g. `ntkit.mlp(3, 512)`, a `Serial` of Conv/Dense layers); None builds
            `ntkit.mlp(depth, 512, w_std=w_std, b_std=b_std)` (ReLU; the kernel does not depend on the width),
            so `depth`, `w_std` and `b_std` are searchable hyperparameters (ignored when arch is given; search
            over `arch` itself, e.g. a list of architectures, otherwise).
        kernel: "ntk" (networks trained in every layer) or "nngp" (last layer only, the Bayesian GP).
        t: None for t = inf (kernel regression), or a number of gradient steps (the ensemble mean at time t).
        learning_rate: the step size of those steps (mean squared loss over all label entries).
        diag_reg: regularisation relative to the mean diagonal: K + diag_reg * trace(K)/n * I.
        solver: "auto" (dense while it fits and n <= ntkit.linalg.DENSE_MAX_N, else CG), "cholesky", "eigh",
            "cg" or "nystrom" (n_centers centres, memory O(n M)); the route taken is `solver_` after fit.
        n_centers: M for solver="nystrom" (default min(n, 1000)).
        tol: CG's relative residual (default 1e-8 in float64).
        memory_budget: bytes of working memory for the kernel blocks.
        device: the torch device to compute on (None: CPU).
        dtype: "float64" (default) or "float32".
        input_shape: per-row shape for convolutional architectures, e.g. (1, 8, 8): rows are reshaped to it.

    Attributes after fit: `arch_`, `solver_`, `solution_` (an `ntkit.linalg.Solution`; None at finite t),
    `n_features_in_`.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike) -> NTKRegressor:
        self._check_params()
        x_np, y_np = validate_data(
            self,
            _to_numpy(X),
            _to_numpy(y),
            dtype=[np.float64, np.float32],
            multi_output=True,
            y_numeric=True,
        )
        self._x = self._inputs(X, reset=True, validated=x_np)
        y_np = np.asarray(y_np, dtype=np.float64)
        self._y_1d = y_np.ndim == 1
        y2 = torch.tensor(y_np.reshape(y_np.shape[0], -1), dtype=self._x.dtype, device=self._x.device)
        self._y_train = y2
        self._fit_targets(X, y2)
        return self

    def predict(
        self, X: ArrayLike, return_std: bool = False, return_cov: bool = False
    ) -> Prediction | tuple[Prediction, Prediction]:
        """Mean predictions (n,) or (n, k); with return_std / return_cov also the posterior's std (n,) or cov (n, n).

        The posterior is that of one output (every output has the same covariance), from
        `ntkit.predict.gp_inference` (t=None) or `gradient_descent_mse_ensemble` (finite t): the covariance over
        initialisations, K_xx + A K A^T - A K_Xx - K_xX A^T with A = C (C_XX + shift I)^-1 (C the chosen kernel, K
        the NNGP). With diag_reg=0 and kernel="nngp" it is sklearn's GaussianProcessRegressor posterior; with
        diag_reg > 0 the regularisation acts on the inverted kernel only (ntkit's convention), not as noise.
        With solver_ "cg" or "nystrom" nothing dense of size n x n is formed: A^T = W comes from
        `ntkit.linalg.training_weights` (CG against the cross-kernel columns, with the fit's preconditioner, in
        batches of test points), and for "nystrom" A is the Nystrom predictor's own map (exact when n_centers=n).
        """
        if return_std and return_cov:
            raise ValueError("at most one of return_std and return_cov can be requested")
        mean = self._outputs(X)
        mean_out = mean[:, 0] if self._y_1d else mean
        if not (return_std or return_cov):
            return self._out(mean_out, X)
        cov = self._posterior_cov(X, diagonal_only=return_std)
        variance = cov if cov.ndim == 1 else torch.diagonal(cov)
        extra = torch.sqrt(variance.clamp(min=0)) if return_std else cov
        return self._out(mean_out, X), self._out(extra, X)

    def _iterative_cov(self, x: torch.Tensor, diagonal_only: bool) -> torch.Tensor:
        """The posterior covariance (m, m), or its diagonal (m,), at t = inf without the dense kernel, for
        solver_ "cg" or "nystrom": W = A^T by `ntkit.linalg.training_weights` (the fit's route, preconditioner
        and rank), then K_xx + W^T K W - W^T K_Xx - K_xX W with products by the NNGP operator K, in batches of
        test points (for the diagonal) so that W takes at most a quarter of the memory budget."""
        n, m = self._x.shape[0], x.shape[0]
        budget = self.memory_budget
        train = linalg.ArchKernel(self.arch_, self._x, get=self.kernel, memory_budget=budget)
        nngp = train if self.kernel == "nngp" else linalg.ArchKernel(self.arch_, self._x, get="nngp",
                                                                     memory_budget=budget)  # fmt: skip
        options = {"tol": self.tol, "seed": 0}
        if not diagonal_only:
            w = linalg.training_weights(train, self.solution_, self._k(x, self._x), **options)
            cross = self._k(self._x, x, get="nngp")  # K(X, x), (n, m)
            aw = w.T @ cross
            cov = self._k(x, None, get="nngp") + w.T @ nngp.matmul(w) - aw - aw.T
            return (cov + cov.T) / 2
        room = (train.memory_budget // 4) // (3 * n * x.element_size())
        batch = max(1, min(m, room))
        diag = torch.empty(m, dtype=x.dtype, device=x.device)
        for i in range(0, m, batch):
            xb = x[i : i + batch]
            w = linalg.training_weights(train, self.solution_, self._k(xb, self._x), **options)
            cross = self._k(self._x, xb, get="nngp")
            kxx = linalg.ArchKernel(self.arch_, xb, get="nngp", memory_budget=budget, cache=False).diagonal()
            diag[i : i + batch] = kxx + (w * nngp.matmul(w)).sum(0) - 2.0 * (w * cross).sum(0)
        return diag

    def _posterior_cov(self, X: Any, diagonal_only: bool = False) -> torch.Tensor:
        """The posterior covariance (m, m); with diagonal_only the iterative routes give only its diagonal (m,)."""
        from ..predict import gp_inference, gradient_descent_mse_ensemble

        x = self._inputs(X, reset=False)
        if self.solver_ in ("cg", "nystrom"):
            return self._iterative_cov(x, diagonal_only)
        if self.t is None:
            k = self.arch_.kernel(self._x, None)
            c = self.arch_.kernel(x, self._x)
            kxx = self.arch_.kernel(x, None, get="nngp").nngp
            out = gp_inference(k, self._y_train, k_test_train=c, k_test_test=kxx, get=self.kernel,
                               compute_cov=True, diag_reg=self.diag_reg, solver=self.solver_)  # fmt: skip
        else:
            predictor = gradient_descent_mse_ensemble(
                self.arch_, self._x, self._y_train, learning_rate=self.learning_rate, diag_reg=self.diag_reg
            )
            out = predictor(float(self.t), x, get=self.kernel, compute_cov=True)
        return getattr(out, self.kernel).covariance


class NTKClassifier(ClassifierMixin, _NTKBase):
    """Classification by kernel regression on one-hot targets (argmax of the outputs), with the exact NTK/NNGP.

    The parameters are those of `NTKRegressor`. `decision_function(X)` gives the regression outputs (n, k)
    ((n,) for two classes: the second class's output minus the first's); `classes_` the labels.
    """

    def fit(self, X: ArrayLike, y: ArrayLike) -> NTKClassifier:
        self._check_params()
        x_np, y_np = validate_data(self, _to_numpy(X), _to_numpy(y), dtype=[np.float64, np.float32])
        self._x = self._inputs(X, reset=True, validated=x_np)
        check_classification_targets(y_np)
        self._encoder = LabelEncoder().fit(y_np)
        self.classes_ = self._encoder.classes_
        codes = self._encoder.transform(y_np)
        onehot = torch.zeros((len(codes), len(self.classes_)), dtype=self._x.dtype, device=self._x.device)
        onehot[torch.arange(len(codes)), torch.as_tensor(codes, device=self._x.device)] = 1.0
        self._fit_targets(X, onehot)
        return self

    def decision_function(self, X: ArrayLike) -> Prediction:
        out = self._outputs(X)
        if len(self.classes_) == 2:
            out = out[:, 1] - out[:, 0]
        return self._out(out, X)

    def predict(self, X: ArrayLike) -> np.ndarray:
        out = self._outputs(X)
        if len(self.classes_) == 1:
            idx = np.zeros(out.shape[0], dtype=int)
        else:
            idx = out.argmax(dim=1).cpu().numpy()
        return self.classes_[idx]
