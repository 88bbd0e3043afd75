"""The layer protocol: one kernel state, and the four things every layer, activation and combinator provides.

A layer description maps

- a per-example shape to a shape (`out_shape`): (d,) for features, (C, L) or (C, H, W) channels-first;
- a shape to its finite-width `torch.nn.Module` (`module`), parameters drawn from a generator;
- a `KernelState` to a `KernelState` (`map_state`): the infinite-width recursion of one tile of pairs;
- what it needs from the layers below (`requires_full`), so that the cheapest state that suffices is kept;
- a content fingerprint (`fingerprint`), which identifies it for the on-disk store.

Combinators (`Serial`, `Parallel`, `Residual`, ...) only loop over their layers through this protocol; no container
knows a concrete layer type, so a new layer is a new file.

The state of a tile of rows (a inputs x) against columns (b inputs x') holds, for every pair of positions p of x
and p' of x' (neural-tangents' conventions, Novak et al. 2019):

    nngp[p, p', i, j] = S(x_i, x'_j)[p, p']       ntk[p, p', i, j] = T(x_i, x'_j)[p, p']
    cov1[p, p', i]    = S(x_i, x_i)[p, p']        cov2[p, p', j]   = S(x'_j, x'_j)[p, p']

with p standing for as many axes as the input has spatial axes (none for features). When only the spatial
diagonal is needed (`full=False`: readouts by Flatten), the states keep S[p, p] alone: nngp[p, i, j], cov1[p, i].
Positions come first and examples last, so that the shifted slices of convolutions and pooling move long
contiguous runs of memory. The variances that activations need are the spatial diagonals of cov1 and cov2;
carrying the self-covariances along (rather than only the variances) is what lets pooling compute the variance
of a pooled unit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import marshal
import math
import os
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._validation import check_int

if TYPE_CHECKING:
    from .kernel import Kernel

Shape = tuple[int, ...]
"""A per-example shape: (d,) for features, (C, L) or (C, H, W) for sequences and images (channels first)."""


@dataclasses.dataclass(frozen=True)
class KernelState:
    """The infinite-width kernels of one tile of input pairs, at one point of the network.

    Attributes:
        nngp: S for every pair of the tile, (*pos, a, b); pos = (*spatial, *spatial) if `full`, else spatial.
        ntk: T, shaped like nngp; None while it is still zero (nothing trainable below) or not requested.
        cov1: S of each row input with itself, (*pos, a).
        cov2: the same for the columns, (*pos, b); None when the columns are the rows (a diagonal tile of
            K(X, X)), which saves computing them twice.
        shape: the per-example shape of the values at this point of the network ((d,) or (C, *spatial)).
        full: whether the whole spatial covariance is kept, or only its diagonal S[p, p].
        gaussian: whether the values are Gaussian pre-activations (activations need that: their closed forms
            and quadratures are expectations over a Gaussian).
        need_ntk: whether the NTK is wanted at all.
        tape: where the self-covariances of all inputs, computed once, are replayed from (see
            `SelfCovarianceTape`); None computes them with the tile.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov1: torch.Tensor
    cov2: torch.Tensor | None
    shape: Shape
    full: bool
    gaussian: bool
    need_ntk: bool = True
    tape: SelfCovarianceTape | None = None

    @property
    def spatial(self) -> Shape:
        """The spatial shape: () for features."""
        return self.shape[1:]

    @property
    def position_dims(self) -> int:
        """How many leading axes of the tensors index positions: 2k (full), k (diagonal), 0 (features)."""
        return len(self.spatial) * (2 if self.full else 1)

    @property
    def covariances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cov1, cov2), with cov2 filled in when it is the same as cov1."""
        return self.cov1, self.cov1 if self.cov2 is None else self.cov2

    def replace(self, **changes: Any) -> KernelState:
        return dataclasses.replace(self, **changes)

    def variances(self, cov: torch.Tensor) -> torch.Tensor:
        """The spatial diagonal S(x, x)[p, p] of a self-covariance `cov` (*pos, n): shape (*spatial, n)."""
        if not self.full or not self.spatial:
            return cov
        n, positions = cov.shape[-1], math.prod(self.spatial)
        diagonal = cov.reshape(positions, positions, n).diagonal(dim1=0, dim2=1)  # (n, P)
        # A copy, not a view: maps overwrite covariances in place while they still read the variances. Laid out
        # positions-first, as the tiles are, so that broadcasting them against a tile reads them in order.
        return diagonal.T.reshape(*self.spatial, n).clone(memory_format=torch.contiguous_format)

    def pair_variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Variances of the two sides, shaped to broadcast against `nngp`: (..., a, 1) and (..., 1, b)."""
        cov1, cov2 = self.covariances
        v1, v2 = self.variances(cov1), self.variances(cov2)
        if self.full and self.spatial:
            ones = (1,) * len(self.spatial)
            v1 = v1.reshape(*self.spatial, *ones, v1.shape[-1])
            v2 = v2.reshape(*ones, *self.spatial, v2.shape[-1])
        return v1.unsqueeze(-1), v2.unsqueeze(-2)

    def self_variances(self, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two variance views of one self-covariance (*pos, n), shaped to broadcast against it."""
        v = self.variances(cov)
        if not self.full or not self.spatial:
            return v, v
        ones = (1,) * len(self.spatial)
        return v.reshape(*self.spatial, *ones, v.shape[-1]), v.reshape(*ones, *self.spatial, v.shape[-1])

    def map_covariances(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor | None]:
        """The self-covariances after a layer whose map on them is `fn`, as `replace` keywords.

        Every layer updates cov1 and cov2 through this method, so that with a tape they are computed once for
        all inputs (`fn` may overwrite its argument) and each tile replays its rows of them.
        """
        if self.tape is not None:
            return self.tape.step(self, fn)
        return {"cov1": fn(self.cov1), "cov2": None if self.cov2 is None else fn(self.cov2)}

    def map_linear(self, fn: Callable[[torch.Tensor], torch.Tensor], **changes: Any) -> KernelState:
        """Apply the same linear map `fn` (acting on the leading, position axes) to every covariance and the NTK."""
        return self.replace(
            nngp=fn(self.nngp),
            ntk=None if self.ntk is None else fn(self.ntk),
            **self.map_covariances(fn),
            **changes,
        )


class SelfCovarianceTape:
    """The self-covariances S(x, x) of every input after every layer, recorded once and replayed by each tile.

    Each tile of pairs needs its rows' and columns' self-covariances at every layer (for the variances of the
    activations, and for pooling). Computing them with the tile repeats the same work for every tile a row
    appears in: with small spatial tiles that is a quarter of the entries and over half of the operations. The
    driver instead runs the network once over all inputs (as the rows of a one-column state) with a recording
    tape, then gives each tile a tape that replays the records in the same order (the order of
    `map_covariances` calls is fixed by the architecture), sliced to the tile's rows and columns.
    """

    def __init__(self) -> None:
        self.records: list[torch.Tensor] = []
        self._rows: slice | None = None
        self._cols: slice | None = None
        self._columns: SelfCovarianceTape | None = None
        self._position = 0

    def replay(
        self, rows: slice, cols: slice | None, columns: SelfCovarianceTape | None = None
    ) -> SelfCovarianceTape:
        """A tape replaying these records for the examples `rows`, and those of `columns` (default: this tape)
        for `cols` (None: a diagonal tile, whose cov2 is cov1)."""
        tape = SelfCovarianceTape()
        tape.records = self.records
        tape._rows, tape._cols = rows, cols
        tape._columns = self if columns is None else columns
        return tape

    def step(
        self, state: KernelState, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, torch.Tensor | None]:
        if self._rows is None:
            # Recording: fn may work in place, and the previous record must survive it.
            cov1 = fn(state.cov1.clone())
            self.records.append(cov1)
            return {"cov1": cov1, "cov2": None if state.cov2 is None else fn(state.cov2)}
        position = self._position
        self._position += 1
        assert self._columns is not None
        return {
            "cov1": self.records[position][..., self._rows],
            "cov2": None if self._cols is None else self._columns.records[position][..., self._cols],
        }


class LayerError(ValueError):
    """An architecture that cannot be applied to its input; the message names the layer and what was wrong."""


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
    def kernel(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        get: str | Sequence[str] = ("nngp", "ntk"),
        memory_budget: int | None = None,
        store: str | os.PathLike | None = None,
        progress: bool | None = None,
    ) -> Kernel:
        """The exact infinite-width NNGP and NTK between the examples of `x1` and `x2` (see `compute_kernel`).

        x1: (n1, d) features, (n1, C, L) sequences or (n1, C, H, W) images; x2 likewise or None (K(x1, x1),
        by symmetry). `get` chooses "nngp", "ntk" or both; `memory_budget` bounds the working memory; `store`
        writes resumable .npy files to a directory; `progress` shows a bar (None: on a terminal).
        """
        from .kernel import compute_kernel

        return compute_kernel(
            self, x1, x2, get=get, memory_budget=memory_budget, store=store, progress=progress
        )

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
