"""InfiniteWidthKernel: an architecture's exact NNGP or NTK as a scikit-learn `Kernel` (GaussianProcessRegressor,
KernelRidge, SVC(kernel=...) and anything else that takes one)."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.gaussian_process.kernels import Kernel

from .._validation import HasKernel

__all__ = ["InfiniteWidthKernel"]


class InfiniteWidthKernel(Kernel):
    """k(x, x') = the infinite-width NNGP ("nngp") or NTK ("ntk") of `arch`, computed in float64.

    The architecture's parameters (w_std, b_std, depth) are fixed: the kernel exposes no sklearn hyperparameters
    (`theta` is empty), so GaussianProcessRegressor does not optimise it; search them with GridSearchCV over
    `kernel=[InfiniteWidthKernel(ntkit.mlp(d, 512, w_std=w)) for ...]`, or use `NTKRegressor`, whose depth, w_std
    and b_std are estimator parameters. `input_shape` reshapes each row for convolutional architectures, as in
    `NTKRegressor`. Add a `WhiteKernel` for observation noise.
    """

    def __init__(
        self, arch: HasKernel, get: str = "nngp", input_shape: tuple[int, ...] | None = None
    ) -> None:
        self.arch = arch
        self.get = get
        self.input_shape = input_shape

    def _rows(self, X: ArrayLike) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(X, dtype=np.float64))
        if x.ndim == 1:
            x = x[:, None]
        if self.input_shape is not None:
            x = x.reshape(x.shape[0], *self.input_shape)
        return x

    def __call__(
        self, X: ArrayLike, Y: ArrayLike | None = None, eval_gradient: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if self.get not in ("nngp", "ntk"):
            raise ValueError(f"get must be 'nngp' or 'ntk', got {self.get!r}")
        if eval_gradient and Y is not None:
            raise ValueError("gradient can only be evaluated when Y is None")
        x = self._rows(X)
        y = None if Y is None else self._rows(Y)
        k = getattr(self.arch.kernel(x, y, get=self.get), self.get).numpy()
        if eval_gradient:
            return k, np.empty((k.shape[0], k.shape[1], 0))
        return k

    def diag(self, X: ArrayLike) -> np.ndarray:
        x = self._rows(X)
        out = np.empty(x.shape[0])
        for i in range(0, x.shape[0], 256):
            block = getattr(self.arch.kernel(x[i : i + 256], get=self.get), self.get)
            out[i : i + 256] = torch.diagonal(block).numpy()
        return out

    def is_stationary(self) -> bool:
        return False

    @property
    def requires_vector_input(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"InfiniteWidthKernel({self.arch!r}, get={self.get!r})"
