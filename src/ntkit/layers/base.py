"""The layer protocol: one kernel state, and the four things every layer, activation and combinator provides.

A layer description maps

- a per-example shape to a shape (`out_shape`): (d,) for features, (C, L) or (C, H, W) channels-first;
- a shape to its finite-width `torch.nn.Module` (`module`), parameters drawn from a generator;
- a `KernelState` to a `KernelState` (`map_state`): the infinite-width recursion of one tile of pairs;
- what it needs from the layers below (`requires_full`), so that the cheapest state that suffices is kept;
- a content fingerprint (`fingerprint`), which identifies it for the on-disk store.

Combinators (`Serial`, `Parallel`, `Residual`, ...) only loop over their layers through this protocol; no container
knows a concrete layer type, so a new layer is a new file.

The state itself (`KernelState`) and its conventions are in `ntkit.layers.state`; the driver that runs the
recursion tile by tile is `ntkit.layers.kernel`.
"""

from __future__ import annotations

import hashlib
import marshal
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_int
from .kernel import compute_kernel
from .state import KernelState, LayerError, Shape


class Layer:
    """Base class of every layer description: the protocol in the module docstring.

    Subclasses implement `out_shape`, `module` and `map_state`, and `_config` (the parameters that define
    them, for `fingerprint`); `requires_full` defaults to passing on what the layers above need.
    """

    block_cost: float = 1.0
    """Working memory of `map_state` per state entry, relative to the closed forms (quadrature needs more)."""

    def out_shape(self, in_shape: Shape) -> Shape:
        """The per-example shape of the outputs for inputs of `in_shape`; a LayerError if they do not fit."""
        raise NotImplementedError

    def module(self, in_shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        """The finite-width module for inputs of `in_shape`, parameters drawn on the CPU from `generator`."""
        raise NotImplementedError

    def map_state(self, state: KernelState) -> KernelState:
        """The infinite-width kernels after this layer, from those before it (tensors may be reused in place)."""
        raise NotImplementedError

    def requires_full(self, full_above: bool) -> bool:
        """Whether this layer needs the full spatial covariance from below, given what the layers above need."""
        return full_above

    def _config(self) -> tuple:
        """The parameters that define this layer (numbers, strings, nested layers, callables)."""
        return ()

    def fingerprint(self) -> str:
        """A hash of what this layer computes: its type and parameters in full precision, and the code of user
        functions (so two `Elementwise` layers made from different lambdas never share a stored kernel)."""
        digest = hashlib.sha256()
        _feed(digest, (type(self).__module__, type(self).__qualname__, self._config()))
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- the two worlds -------------------------------------------------------------------------------------
    kernel = compute_kernel
    """`arch.kernel(x1, x2=None, *, get=("nngp", "ntk"), memory_budget=None, store=None, progress=None)`: the
    exact infinite-width NNGP and NTK of this architecture (`ntkit.layers.kernel.compute_kernel`)."""

    def build(
        self,
        in_shape: int | Sequence[int],
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """The finite-width network of this description, a `torch.nn.Module` on inputs (n, *in_shape).

        `in_shape` is the number of input features (an int), or (C, L) / (C, H, W) for sequences and images.
        Parameters are drawn from a generator seeded with `seed` (fresh randomness when None) on the CPU and
        then moved to `device`, so one seed gives the same network on every device.
        """
        shape = _as_shape(in_shape)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        out = self.out_shape(shape)
        if len(out) and isinstance(out[0], tuple):
            raise LayerError(
                f"the architecture ends in {len(out)} branches: close every FanOut with FanInSum() or "
                "FanInConcat()"
            )
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(check_int(seed, "seed", minimum=0))
        net = self.module(shape, generator, dtype)
        return net.to(device) if device is not None else net


def _as_shape(in_shape: int | Sequence[int]) -> Shape:
    if isinstance(in_shape, (list, tuple)):
        if not 1 <= len(in_shape) <= 3:
            raise ValueError(
                f"in_shape must be an int (features) or a tuple (C, L) or (C, H, W), got {tuple(in_shape)}"
            )
        return tuple(check_int(v, "in_shape", minimum=1) for v in in_shape)
    return (check_int(in_shape, "in_features", minimum=1),)


def _feed(digest: Any, value: object, depth: int = 0) -> None:
    """Add a canonical encoding of `value` to `digest`; a ValueError for what cannot be identified by content."""
    if depth > 12:
        raise ValueError(
            "cannot fingerprint an architecture nested this deeply (or one that refers to itself)"
        )
    if value is None or isinstance(value, (bool, int, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, float):
        digest.update(f"float:{value.hex()};".encode())  # every bit of the number
    elif isinstance(value, (tuple, list)):
        digest.update(f"{type(value).__name__}[{len(value)}](".encode())
        for item in value:
            _feed(digest, item, depth + 1)
        digest.update(b")")
    elif isinstance(value, Layer):
        digest.update(value.fingerprint().encode())
    elif isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"tensor:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray) and value.dtype != object:
        digest.update(f"ndarray:{value.dtype.str}:{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, np.generic) and not isinstance(value, np.object_):
        digest.update(f"numpy:{value.dtype.str}:".encode())
        _feed(digest, value.item(), depth + 1)
    elif isinstance(value, dict):
        # keys sorted by their repr, so that equal dicts built in another order agree
        digest.update(f"dict[{len(value)}](".encode())
        for key in sorted(value, key=repr):
            _feed(digest, (key, value[key]), depth + 1)
        digest.update(b")")
    elif isinstance(value, (set, frozenset)):
        digest.update(f"set[{len(value)}](".encode())
        for item in sorted(value, key=repr):
            _feed(digest, item, depth + 1)
        digest.update(b")")
    elif isinstance(value, torch.dtype):
        digest.update(f"dtype:{value};".encode())
    elif callable(value):
        _feed_callable(digest, value, depth)
    else:
        raise ValueError(
            f"cannot fingerprint {type(value).__name__} object {value!r}: the store identifies an architecture "
            "by content (numbers, strings, functions); use store=None for this architecture"
        )


def _feed_callable(digest: Any, fn: Callable, depth: int) -> None:
    """Identify a function by its code, constants, defaults, closure and the simple globals it reads."""
    import functools

    if isinstance(fn, functools.partial):
        digest.update(b"partial(")
        _feed(digest, (fn.func, fn.args, tuple(sorted(fn.keywords.items()))), depth + 1)
        digest.update(b")")
        return
    if isinstance(fn, types.MethodType):
        _feed(digest, ("method", fn.__func__, fn.__self__), depth + 1)
        return
    code = getattr(fn, "__code__", None)
    if code is None:
        # Builtins and C functions (torch.tanh, math.erf): their qualified name is their identity; a module
        # without parameters or buffers (nn.SiLU()) is identified by its type and its repr.
        if isinstance(fn, nn.Module):
            if any(True for _ in fn.parameters()) or any(True for _ in fn.buffers()):
                raise ValueError(
                    f"cannot fingerprint the module {type(fn).__name__}: it holds parameters or buffers; "
                    "wrap a plain function instead, or use store=None"
                )
            digest.update(f"module:{type(fn).__module__}.{type(fn).__qualname__}:{fn!r};".encode())
            return
        name = getattr(fn, "__qualname__", None)
        module = getattr(fn, "__module__", None)
        if not isinstance(fn, (types.BuiltinFunctionType, type)) and not (name and module):
            raise ValueError(
                f"cannot fingerprint the callable {fn!r}: give a plain function, a torch function or a "
                "functools.partial of one, or use store=None"
            )
        digest.update(f"builtin:{module}.{name};".encode())
        return
    digest.update(b"code:")
    digest.update(marshal.dumps(code))
    _feed(digest, (fn.__defaults__, tuple(sorted((fn.__kwdefaults__ or {}).items()))), depth + 1)
    for cell in fn.__closure__ or ():
        _feed(digest, cell.cell_contents, depth + 1)
    # The globals it reads are part of what it computes, as its closure is: a global list, dict or array
    # changed between two calls is another function. What cannot be identified by content (an arbitrary
    # object) is refused rather than skipped, which would let a changed object reuse a stale kernel.
    # (co_names also holds attribute names; those that are no global of the function's module are skipped.)
    globals_ = getattr(fn, "__globals__", {})
    for name in code.co_names:
        if name not in globals_:
            continue
        value = globals_[name]
        if isinstance(value, types.ModuleType):
            digest.update(f"global-module:{name}={value.__name__};".encode())
        else:
            digest.update(f"global:{name}=".encode())
            _feed(digest, value, depth + 1)
