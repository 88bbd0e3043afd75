"""Architecture descriptions: each layer knows both its finite-width module and its infinite-width kernel map."""

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
from .dense import Dense, NTKLinear
from .kernel import Kernel
from .serial import Serial, mlp

__all__ = [
    "GELU",
    "Abs",
    "AbsLinear",
    "Activation",
    "Dense",
    "Elementwise",
    "Erf",
    "Identity",
    "Kernel",
    "LeakyReLU",
    "NTKLinear",
    "ReLU",
    "Serial",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "c_sigma",
    "edge_of_chaos",
    "mlp",
]
