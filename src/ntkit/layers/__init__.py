"""Architecture descriptions: each layer knows both its finite-width module and its infinite-width kernel map.

Every layer, activation and combinator follows one protocol (`Layer`, in `base`): `out_shape`, `module`,
`map_state` on a `KernelState`, `requires_full`, `fingerprint`. Any of them has `kernel(x1, x2)` (the exact
infinite-width NNGP and NTK) and `build(in_shape)` (the finite network).
"""

from ._quadrature import QuadratureAccuracyWarning
from .activations import (
    GELU,
    Abs,
    AbsLinear,
    Activation,
    Elementwise,
    Erf,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softplus,
    Tanh,
    c_sigma,
    edge_of_chaos,
)
from .base import Layer
from .combinators import FanInConcat, FanInSum, FanOut, Parallel, Residual, Serial, mlp
from .conv import Conv, NTKConv
from .dense import Dense, NTKLinear
from .kernel import Kernel, KernelUnderflowWarning
from .norm import LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool
from .state import KernelState, LayerError

__all__ = [
    "GELU",
    "Abs",
    "AbsLinear",
    "Activation",
    "AvgPool",
    "Conv",
    "Dense",
    "Elementwise",
    "Erf",
    "FanInConcat",
    "FanInSum",
    "FanOut",
    "Flatten",
    "GlobalAvgPool",
    "Identity",
    "Kernel",
    "KernelState",
    "KernelUnderflowWarning",
    "Layer",
    "LayerError",
    "LayerNorm",
    "LeakyReLU",
    "NTKConv",
    "NTKLinear",
    "Parallel",
    "QuadratureAccuracyWarning",
    "ReLU",
    "Residual",
    "Serial",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "c_sigma",
    "edge_of_chaos",
    "mlp",
]
