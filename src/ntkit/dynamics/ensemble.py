"""Mean and covariance over random initialisations of infinitely wide networks trained on squared loss.

At initialisation an infinitely wide network is a Gaussian process f_0 ~ GP(0, K) with K its NNGP kernel, and
training by gradient flow is linear in f_0 (Lee et al. 2019, sec. 2.3; Jacot et al. 2018). With T the NTK,
X the training points, N the label entries of the loss (see `gradient_descent_mse`) and

    E_t = I - exp(-eta T(X, X) t / N)        (I - (I - eta T / N)**t for discrete steps)
    A_t(x) = T(x, X) T(X, X)^-1 E_t,

the outputs at time t are Gaussian with

    mean(x)      = A_t(x) y
    cov(x, x')   = K(x, x') + A_t(x) K(X, X) A_t(x')^T - A_t(x) K(X, x') - K(x, X) A_t(x')^T.

get="ntk" is training every layer; get="nngp" is training the last layer only, whose NTK is K itself, so T is
replaced by K (the NNGP posterior mean and covariance at t = inf). With k outputs the outputs are independent,
each with this covariance (it is returned once, (m, m)); the mean has y's shape. diag_reg regularises the
kernel that is inverted and exponentiated (T(X, X), or K(X, X) for "nngp"), as in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch

from .. import linalg
from .._loss import REDUCTIONS, label_entries
from .._spectral import Spectrum, decompose, warn_conditioning, warn_unstable_rate
from .._validation import (
    Array,
    HasKernel,
    Times,
    as_float_tensor,
    check_bool,
    check_choice,
    check_cross_kernel,
    check_kernel,
    check_labels,
    check_pair,
    check_real,
    check_times,
)
from .._warnings import STEPS_TO_DISCRETE, deprecated_alias, renamed_keywords
from . import _scalable

if TYPE_CHECKING:
    from ..layers import Kernel

__all__ = [
    "EnsemblePrediction",
    "EnsemblePredictor",
    "Gaussian",
    "gp_inference",
    "gradient_descent_mse_ensemble",
]

KINDS = ("nngp", "ntk")
KernelPair: TypeAlias = "Kernel | Mapping[str, Array]"
"""Kernel matrices by kind: an `ntkit.layers.Kernel` (`.nngp`, `.ntk`) or a dict with those keys."""


@dataclass(frozen=True)
class Gaussian:
    """Mean, shaped like the labels ((m,) or (m, k); a leading time axis for several times), and covariance
    (m, m) of one output (None unless requested)."""

    mean: torch.Tensor
    covariance: torch.Tensor | None = None


@dataclass(frozen=True)
class EnsemblePrediction:
    """Predictions of the ensemble trained with the NNGP (last layer only) and with the NTK (all layers).

    A kind that was not requested through `get` is None.
    """

    nngp: Gaussian | None = None
    ntk: Gaussian | None = None
    solver: str | None = None
    """The route taken: "eigh" (the eigendecomposition), or "cholesky" / "cg" (t = inf by ntkit.linalg)."""


def _requested(get: str | Sequence[str]) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise ValueError("get must name at least one of 'nngp', 'ntk'")
    for name in names:
        check_choice(name, "get", KINDS)
    return tuple(dict.fromkeys(names))


def _kernel(
    arch: HasKernel,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    get: str | Sequence[str],
    memory_budget: int | None,
) -> Kernel:
    """arch.kernel(x1, x2, get=...), passing memory_budget only when one is set (any `.kernel` works)."""
    extra = {} if memory_budget is None else {"memory_budget": memory_budget}
    return arch.kernel(x1, x2, get=get, **extra)


def _kernel_part(kernel: KernelPair, kind: str, name: str) -> Array:
    """kernel.nngp / kernel.ntk of a `ntkit.layers.Kernel` (or a mapping with those keys)."""
    value = kernel.get(kind) if isinstance(kernel, dict) else getattr(kernel, kind, None)
    if value is None:
        raise ValueError(f"{name} has no {kind!r} matrix; compute it with get=('nngp', 'ntk')")
    return value


class _EnsembleCore:
    """Shared evaluation of the mean and covariance from kernel matrices, one eigendecomposition per kind."""

    def __init__(
        self,
        k_train: torch.Tensor,
        t_train: torch.Tensor | None,
        y: torch.Tensor,
        y_was_1d: bool,
        *,
        learning_rate: float,
        diag_reg: float,
        reduction: str,
        discrete: bool,
    ) -> None:
        self.k_train = k_train
        self.t_train = t_train
        self.y = y
        self.y_was_1d = y_was_1d
        self.learning_rate = learning_rate
        self.diag_reg = diag_reg
        self.reduction = reduction
        self.discrete = discrete
        self.rate = learning_rate / label_entries(y, reduction)
        self._spectra: dict[str, Spectrum] = {}

    def spectrum(self, kind: str) -> Spectrum:
        if kind not in self._spectra:
            matrix = self.k_train if kind == "nngp" else self.t_train
            name = f"the training {kind.upper()} kernel"
            spectrum = decompose(matrix, diag_reg=self.diag_reg, name=name)
            warn_conditioning(spectrum, name)
            if self.discrete:
                entries = label_entries(self.y, self.reduction)
                warn_unstable_rate(self.learning_rate, entries, spectrum.largest, name)
            self._spectra[kind] = spectrum
        return self._spectra[kind]

    def moments(
        self,
        kind: str,
        times: torch.Tensor,
        scalar: bool,
        cross_train: torch.Tensor,
        cross_nngp: torch.Tensor | None,
        k_test_test: torch.Tensor | None,
    ) -> Gaussian:
        """`cross_train` is T(x, X) (or K(x, X) for "nngp"); `cross_nngp` is K(x, X)."""
        spectrum = self.spectrum(kind)
        _, h = spectrum.decay(times, self.rate, self.discrete)
        v = spectrum.eigenvectors
        left = cross_train @ v  # (m, n)
        a = (left[None, :, :] * h[:, None, :]) @ v.T  # A_t, (T, m, n)
        mean = a @ self.y  # (T, m, k)
        covariance = None
        if k_test_test is not None and cross_nngp is not None:
            ak = a @ cross_nngp.T  # A_t K(X, x'), (T, m, m)
            covariance = k_test_test + a @ self.k_train @ a.transpose(1, 2) - ak - ak.transpose(1, 2)
            covariance = (covariance + covariance.transpose(1, 2)) / 2
        if self.y_was_1d:
            mean = mean[..., 0]
        if scalar:
            mean = mean[0]
            covariance = None if covariance is None else covariance[0]
        return Gaussian(mean=mean, covariance=covariance)


class EnsemblePredictor:
    """Mean and covariance of infinitely wide networks of one architecture trained on (x_train, y_train).

    Made by `gradient_descent_mse_ensemble`; call it as `predict(t=None, x_test=None, get=("nngp", "ntk"),
    compute_cov=False)`. The training kernels are computed once (attribute `k_train_train`, an
    `ntkit.layers.Kernel`; None when even they do not fit and blocks are computed on the fly) and each kind's
    eigendecomposition on first use.
    """

    kernel_train_train = deprecated_alias("k_train_train", "kernel_train_train", "EnsemblePredictor")

    @renamed_keywords(steps=STEPS_TO_DISCRETE)
    def __init__(
        self,
        arch: HasKernel,
        x_train: Array,
        y_train: Array,
        *,
        learning_rate: float,
        diag_reg: float,
        reduction: str,
        discrete: bool,
        solver: str = "auto",
        memory_budget: int | None = None,
    ) -> None:
        if not callable(getattr(arch, "kernel", None)):
            raise TypeError(
                f"arch must be an architecture with a .kernel(x1, x2) method (e.g. ntkit.layers.mlp(...)), "
                f"got {type(arch).__name__}"
            )
        reduction = check_choice(reduction, "reduction", REDUCTIONS)
        discrete = check_bool(discrete, "discrete")
        learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
        diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
        self.arch = arch
        self.x_train = as_float_tensor(x_train, "x_train")
        y = check_labels(y_train, self.x_train.shape[0], "y_train", like=self.x_train, against="x_train")
        y_was_1d = y.ndim == 1
        y = y[:, None] if y_was_1d else y
        self.discrete = discrete
        self.memory_budget = memory_budget
        n, x = self.x_train.shape[0], self.x_train
        self.solver = _scalable.choose(solver, n, x.dtype, x.device, 2, "gradient_descent_mse_ensemble")
        self.diag_reg = diag_reg
        if self.solver != "eigh":
            self._y, self._y_was_1d = y, y_was_1d
            if linalg.dense_fits(n, x.dtype, x.device, 2.5):
                self.k_train_train = _kernel(arch, x, None, KINDS, memory_budget)
                self._ops = {kind: getattr(self.k_train_train, kind) for kind in KINDS}
            else:  # not even the kernels fit: operators computing blocks on the fly
                self.k_train_train = None
                self._ops = {
                    kind: linalg.ArchKernel(arch, x, get=kind, memory_budget=memory_budget) for kind in KINDS
                }
            self._core = None
            return
        self.k_train_train = _kernel(arch, self.x_train, None, KINDS, memory_budget)
        k_train = check_kernel(self.k_train_train.nngp, "the training NNGP kernel")
        t_train = check_kernel(self.k_train_train.ntk, "the training NTK")
        self._core = _EnsembleCore(
            k_train, t_train, y, y_was_1d,
            learning_rate=learning_rate, diag_reg=diag_reg, reduction=reduction, discrete=discrete,
        )  # fmt: skip

    def __call__(
        self,
        t: Times = None,
        x_test: Array | None = None,
        get: str | Sequence[str] = KINDS,
        compute_cov: bool = False,
    ) -> EnsemblePrediction:
        """Mean (and covariance) of the outputs at time(s) t on `x_test` (default: the training points).

        Args:
            t: steps of size learning_rate (scalar, 1-D tensor for a leading time axis, None / inf: t = inf).
            x_test: (m, d) test inputs; None predicts on the training points.
            get: "nngp" (last layer trained), "ntk" (all layers trained), or both.
            compute_cov: also return the (m, m) covariance of each output over initialisations.
        """
        core = self._core
        kinds = _requested(get)
        if not isinstance(compute_cov, bool):
            raise TypeError(f"compute_cov must be a bool, got {type(compute_cov).__name__}")
        if core is None:
            return self._solve_route(t, x_test, kinds, compute_cov)
        times, scalar = check_times(t, "t", discrete=core.discrete, like=core.k_train)
        if x_test is None:
            cross_nngp, cross_ntk = core.k_train, core.t_train
            k_test_test = core.k_train if compute_cov else None
        else:
            x_test = as_float_tensor(x_test, "x_test", like=self.x_train)
            check_pair(x_test, self.x_train, "x_test", "x_train")
            # The NNGP cross-kernel is needed for the covariance and for "nngp"; the NTK only for "ntk".
            needed = tuple(kind for kind in KINDS if kind in kinds or (kind == "nngp" and compute_cov))
            cross = self.arch.kernel(x_test, self.x_train, get=needed)
            cross_nngp, cross_ntk = cross.nngp, cross.ntk
            k_test_test = self.arch.kernel(x_test, None, get="nngp").nngp if compute_cov else None
        out = {}
        for kind in kinds:
            cross_train = cross_nngp if kind == "nngp" else cross_ntk
            out[kind] = core.moments(kind, times, scalar, cross_train, cross_nngp, k_test_test)
        return EnsemblePrediction(**out, solver="eigh")

    def _solve_route(
        self, t: Times, x_test: Array | None, kinds: tuple[str, ...], compute_cov: bool
    ) -> EnsemblePrediction:
        """t = inf by kernel solves (ntkit.linalg), for training kernels whose eigendecomposition does not fit."""
        like = self.x_train
        times, scalar = check_times(t, "t", discrete=False, like=like)
        _scalable.require_infinite(times, self.solver)
        if x_test is None:
            if compute_cov:
                raise ValueError(
                    "compute_cov=True on the training points needs an n x n covariance, which does not fit here; "
                    "pass x_test"
                )
            x_test = self.x_train
        x_test = as_float_tensor(x_test, "x_test", like=like)
        check_pair(x_test, self.x_train, "x_test", "x_train")
        needed = tuple(kind for kind in KINDS if kind in kinds or (kind == "nngp" and compute_cov))
        cross = _kernel(self.arch, x_test, self.x_train, needed, self.memory_budget)
        k_test_test = (
            _kernel(self.arch, x_test, None, "nngp", self.memory_budget).nngp if compute_cov else None
        )
        out = {}
        for kind in kinds:
            train = self._ops[kind]

            def solve_train(
                rhs: torch.Tensor, train: torch.Tensor | linalg.KernelOperator = train
            ) -> torch.Tensor:
                return _scalable.solve(train, rhs, self.diag_reg, self.solver)

            mean, cov = _scalable.moments(
                solve_train, getattr(cross, kind), self._y, cross.nngp, self._ops["nngp"], k_test_test
            )
            if self._y_was_1d:
                mean = mean[..., 0]
            if not scalar:
                mean = mean.expand(times.numel(), *mean.shape)
                cov = None if cov is None else cov.expand(times.numel(), *cov.shape)
            out[kind] = Gaussian(mean=mean, covariance=cov)
        return EnsemblePrediction(**out, solver=self.solver)


@renamed_keywords(steps=STEPS_TO_DISCRETE)
def gradient_descent_mse_ensemble(
    arch: HasKernel,
    x_train: Array,
    y_train: Array,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    reduction: str = "mean",
    discrete: bool = False,
    solver: str = "auto",
    memory_budget: int | None = None,
) -> EnsemblePredictor:
    """Mean and covariance over initialisations of infinitely wide networks trained by MSE gradient descent.

    The formulas are in the module docstring (Lee et al. 2019, eqs. 13-16). The kernels come from
    `arch.kernel(x1, x2)` (its `.nngp` K and `.ntk` T); learning_rate, reduction and the time convention are
    those of `gradient_descent_mse` (t counts steps of size learning_rate; discrete=True uses exact
    gradient-descent steps, as a finite network trained by `ntkit.train` takes).

    Args:
        arch: an architecture such as `ntkit.layers.mlp(2, 512)` (anything with `.kernel(x1, x2, get=...)`).
        x_train: (n, d) training inputs; results take their dtype and device.
        y_train: (n,) or (n, k) labels.
        learning_rate, diag_reg, reduction, discrete: as in `gradient_descent_mse`.
        solver: "auto" (the eigendecomposition when the kernels and it fit in memory; otherwise t = inf only,
            by Cholesky, or by preconditioned CG on kernel operators that compute blocks on the fly when not even
            the kernels fit), "eigh", "cholesky" or "cg". The route taken: the predictor's `solver` attribute
            and each prediction's `.solver`.
        memory_budget: working memory of the kernel computations (see `arch.kernel`).

    Returns:
        An `EnsemblePredictor`: `predict(t=None, x_test=None, get=("nngp", "ntk"), compute_cov=False)`,
        returning an `EnsemblePrediction` with `.nngp` and `.ntk`, each a `Gaussian` (`.mean`, `.covariance`).
    """
    return EnsemblePredictor(
        arch, x_train, y_train,
        learning_rate=learning_rate, diag_reg=diag_reg, reduction=reduction, discrete=discrete, solver=solver,
        memory_budget=memory_budget,
    )  # fmt: skip


def gp_inference(
    k_train_train: KernelPair,
    y_train: Array,
    *,
    k_test_train: KernelPair | None = None,
    k_test_test: KernelPair | Array | None = None,
    get: str | Sequence[str] = KINDS,
    compute_cov: bool = False,
    diag_reg: float = 0.0,
    solver: str = "auto",
) -> EnsemblePrediction:
    """Exact posteriors at t = inf: the NNGP posterior and the NTK-GP (the trained infinite ensemble).

    NNGP (Bayesian inference with the prior GP(0, K); Lee et al. 2018): mean K(x, X) K^-1 y, covariance
    K(x, x') - K(x, X) K^-1 K(X, x'). NTK-GP (infinitely wide networks trained to convergence; Lee et al.
    2019, eq. 16): the formulas of the module docstring with E = I. Both are the t = inf limit of
    `gradient_descent_mse_ensemble`, here from kernel matrices computed by the caller.

    Args:
        k_train_train: kernels of the training points with themselves, with `.nngp` and `.ntk` (an
            `ntkit.layers.Kernel`, or a dict with those keys); only the kinds in `get` are needed, and the
            NNGP for the covariance.
        y_train: (n,) or (n, k) labels.
        k_test_train: kernels between test and training points, (m, n) each; None predicts on the training
            points.
        k_test_test: the NNGP of the test points with themselves, (m, m) (a tensor or numpy array, or a kernel
            with `.nngp`); needed for the covariance at test points.
        get: "nngp", "ntk" or both.
        compute_cov: also return the (m, m) covariance of each output.
        diag_reg: adds diag_reg * trace / n to the diagonal of the inverted training kernel.
        solver: "auto" (the eigendecomposition when it fits in memory, else Cholesky or preconditioned CG from
            `ntkit.linalg`), "eigh", "cholesky" or "cg"; the result's `.solver` says which was taken.
    """
    kinds = _requested(get)
    diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
    if not isinstance(compute_cov, bool):
        raise TypeError(f"compute_cov must be a bool, got {type(compute_cov).__name__}")
    if compute_cov and k_test_train is not None and k_test_test is None:
        raise ValueError(
            "compute_cov=True at test points needs k_test_test, the NNGP of the test points (m, m)"
        )
    needs = set(kinds) | ({"nngp"} if compute_cov else set())
    train = {}
    for kind in sorted(needs):
        matrix = _kernel_part(k_train_train, kind, "k_train_train")
        train[kind] = check_kernel(matrix, f"k_train_train.{kind}")
    like = next(iter(train.values()))
    n = like.shape[0]
    for kind, matrix in train.items():
        if matrix.shape != like.shape:
            raise ValueError(
                f"k_train_train.{kind} has shape {tuple(matrix.shape)}, expected {tuple(like.shape)}"
            )
    y = check_labels(y_train, n, "y_train", like=like, against="k_train_train")
    y_was_1d = y.ndim == 1
    y = y[:, None] if y_was_1d else y
    core = _EnsembleCore(
        train.get("nngp"), train.get("ntk"), y, y_was_1d,
        learning_rate=1.0, diag_reg=diag_reg, reduction="sum", discrete=False,
    )  # fmt: skip
    times, scalar = check_times(None, "t", discrete=False, like=like)
    test_test = None
    if k_test_train is None:
        cross = dict(train)
        if compute_cov:
            test_test = train["nngp"]
    else:
        cross = {}
        for kind in train:
            matrix = _kernel_part(k_test_train, kind, "k_test_train")
            cross[kind] = check_cross_kernel(matrix, n, f"k_test_train.{kind}", like)
        if compute_cov:
            raw = (
                k_test_test
                if isinstance(k_test_test, (torch.Tensor, np.ndarray))
                else _kernel_part(k_test_test, "nngp", "k_test_test")
            )
            test_test = as_float_tensor(raw, "k_test_test", like=like)
            m = cross["nngp"].shape[0]
            if tuple(test_test.shape) != (m, m):
                raise ValueError(f"k_test_test must have shape ({m}, {m}), got {tuple(test_test.shape)}")
    route = _scalable.choose(solver, n, like.dtype, like.device, 0, "gp_inference")
    out = {}
    for kind in kinds:
        if route == "eigh":
            out[kind] = core.moments(kind, times, scalar, cross[kind], cross.get("nngp"), test_test)
            continue

        def solve_train(rhs: torch.Tensor, matrix: torch.Tensor = train[kind]) -> torch.Tensor:
            return _scalable.solve(matrix, rhs, diag_reg, route)

        mean, cov = _scalable.moments(
            solve_train, cross[kind], y, cross.get("nngp"), train.get("nngp"), test_test
        )
        out[kind] = Gaussian(mean=mean[:, 0] if y_was_1d else mean, covariance=cov)
    return EnsemblePrediction(**out, solver=route)
