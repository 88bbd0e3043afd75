"""Kernel operators: products with a kernel matrix K computed block by block, never formed whole unless it fits.

A solver that only needs K @ v (conjugate gradients), a few columns K[:, S] (Nystrom, preconditioners) and the
diagonal works on any `KernelOperator`:

- `DenseKernel(matrix)`: a matrix already in memory (a tensor or numpy array);
- `ArchKernel(arch, x1, x2=None, get="ntk")`: the exact infinite-width NNGP or NTK of an ntkit architecture,
  each block the whole depth recursion of `arch.kernel` on a slice of rows against a slice of columns;
- `EmpiricalKernel(model, x1, x2=None)`: the empirical NTK of a `torch.nn.Module` (`ntkit.empirical_ntk`) per
  block.

Blocks are sized from `memory_budget` (working memory, bytes; `ntkit.tiling.DEFAULT_MEMORY_BUDGET` by default).
For K(X, X) only blocks on and above the diagonal are computed, each used for its mirror as well. Computed blocks
are kept in memory while their total stays within `cache` bytes (default: half the memory free on the device at
construction), so the first product computes the kernel and later ones (the iterations of CG) reuse it; blocks
beyond the cache are recomputed on every product, so memory stays bounded whatever n is.

With `store=DIR` the blocks are kept on disk instead, by the project's one block scheduler and store
(`ntkit.tiling.run_blocks`): the first product computes every block into DIR/kernel.npy, recording each
finished block with a checksum, and later products read them back one row panel at a time (the operating
system's page cache keeps what it can; the process holds one panel). An interrupted run (an exception, a
killed process) keeps the blocks finished so far; a new operator on the same inputs and DIR verifies them
against their checksums and computes only the missing ones, and a damaged or foreign store raises
`ntkit.tiling.StoreError` naming the file. That is the route for a long CG or Nystrom run whose kernel does not
fit in memory but fits on disk: each product then costs a read of n^2 / 2 entries instead of their recomputation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import tiling
from .._validation import Array, HasKernel, as_float_tensor, check_choice, check_int, check_real

if TYPE_CHECKING:
    import dask.array

__all__ = ["ArchKernel", "DenseKernel", "EmpiricalKernel", "KernelOperator", "as_operator"]

Index = slice | torch.Tensor
_MAX_BLOCK = (
    2048  # measured: larger blocks gain nothing for the recursion and cost cache misses in the products
)
_LIVE_OUTPUTS = 4.0  # a block of K, its mirror's contiguous copy and the products' temporaries


class KernelOperator:
    """A kernel matrix K of shape (n1, n2), accessed through products, columns and its diagonal.

    Subclasses define `_block(rows, cols)` (the dense block K[rows, cols] for slices or index tensors); this
    class schedules blocks within the memory budget, caches them, and keeps the symmetry of K(X, X).

    Attributes: `shape`, `dtype`, `device`, `symmetric` (K(X, X), computed from the upper triangle),
    `block_size`, `cached_bytes`, `store` (the directory holding the blocks on disk, or None).
    """

    _STORE_NAME = "kernel"  # the matrix's name in the store: DIR/kernel.npy

    def __init__(
        self,
        n1: int,
        n2: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        symmetric: bool,
        memory_budget: int | None = None,
        cache: int | bool | None = None,
        progress: bool | None = None,
        store: str | os.PathLike | None = None,
    ) -> None:
        self.shape = (int(n1), int(n2))
        self.dtype = dtype
        self.device = device
        self.symmetric = symmetric
        budget = tiling.DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        self.memory_budget = int(check_real(budget, "memory_budget", minimum=0.0, strict=True))
        side = int(math.sqrt(self.memory_budget / 2 / (_LIVE_OUTPUTS * dtype.itemsize)))
        if side < 16:
            raise tiling.MemoryBudgetError(
                f"memory_budget={self.memory_budget} bytes is too small for a 16 x 16 kernel block "
                f"(needs {int(2 * _LIVE_OUTPUTS * dtype.itemsize * 256)} bytes); raise memory_budget"
            )
        self.block_size = min(side, _MAX_BLOCK, max(n1, n2))
        if store is not None and not isinstance(store, (str, os.PathLike)):
            raise TypeError(
                f"store must be a directory path (str or os.PathLike) or None, got {type(store).__name__}"
            )
        if store is not None and cache not in (None, False):
            raise ValueError(
                f"cache={cache!r} and store={str(store)!r} were both given: with store= the blocks are read back "
                "from disk (the OS page cache keeps what fits), so leave cache=None"
            )
        self.store = None if store is None else Path(store)
        self._store_ready = False
        if self.store is not None:
            cache = False
        if cache is None:
            free = tiling.available_memory(device)
            self._cache_limit = 0 if free is None else free // 2
        elif isinstance(cache, bool):
            self._cache_limit = math.inf if cache else 0
        else:
            self._cache_limit = check_int(cache, "cache", minimum=0)
        self.progress = progress
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self.cached_bytes = 0
        self._diagonal: torch.Tensor | None = None

    # ---- what subclasses provide -------------------------------------------------------------------------
    def _block(self, rows: Index, cols: Index) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _store_key(self) -> str:
        """What identifies this kernel in a store (its inputs and what computes it); subclasses with a store."""
        raise TypeError(f"{type(self).__name__} cannot keep its blocks in a store= directory")

    def _diagonal_values(self) -> torch.Tensor:
        """diag(K) of a symmetric operator, from the diagonal blocks (n * block_size entries)."""
        n = self.shape[0]
        step = min(self.block_size, 256)
        parts = [torch.diagonal(self._block(slice(i, min(i + step, n)), None)) for i in range(0, n, step)]
        return torch.cat(parts)

    # ---- public ------------------------------------------------------------------------------------------
    def diagonal(self) -> torch.Tensor:
        """diag(K), (n,), for a square operator."""
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"a {self.shape[0]} x {self.shape[1]} kernel has no diagonal")
        if self._diagonal is None:
            self._diagonal = self._diagonal_values()
        return self._diagonal

    def columns(self, index: Sequence[int] | Array) -> torch.Tensor:
        """K[:, index], (n1, len(index)), computed in row blocks within the memory budget."""
        idx = torch.as_tensor(index, dtype=torch.long, device="cpu").reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.shape[1]):
            raise IndexError(f"column index out of range for a kernel with {self.shape[1]} columns")
        n1 = self.shape[0]
        per_row = int(2 * _LIVE_OUTPUTS * self.dtype.itemsize * max(1, idx.numel()))
        rows = max(16, min(n1, self.memory_budget // per_row))
        out = torch.empty((n1, idx.numel()), dtype=self.dtype, device=self.device)
        for i in range(0, n1, rows):
            out[i : i + rows] = self._block(slice(i, min(i + rows, n1)), idx)
        return out

    def block(self, rows: Index, cols: Index) -> torch.Tensor:
        """The dense block K[rows, cols] (slices or index tensors)."""
        return self._block(rows, cols)

    def to_dense(self) -> torch.Tensor:
        """The whole matrix (n1, n2): only for matrices that fit in memory."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for (i, j), blk in self._blocks(desc="kernel (dense)"):
            out[i, j] = blk
            if self.symmetric and i != j:
                out[j, i] = blk.T
        return out

    def matmul(self, v: Array) -> torch.Tensor:
        """K @ v for v of shape (n2,) or (n2, k); result (n1,) or (n1, k) in the operator's dtype and device."""
        v = as_float_tensor(v, "v", ndim=None)
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(
                f"v must have shape ({self.shape[1]},) or ({self.shape[1]}, k), got {tuple(v.shape)}"
            )
        was_1d = v.ndim == 1
        v = v.to(dtype=self.dtype, device=self.device)
        v2 = v[:, None] if was_1d else v
        out = torch.zeros((self.shape[0], v2.shape[1]), dtype=self.dtype, device=self.device)
        for (i, j), blk in self._blocks(desc="kernel product"):
            out[i] += blk @ v2[j]
            if self.symmetric and i != j:
                out[j] += blk.T @ v2[i]
        return out[:, 0] if was_1d else out

    __matmul__ = matmul

    def clear_cache(self) -> None:
        """Drop the cached blocks (they are recomputed on the next product)."""
        self._cache.clear()
        self.cached_bytes = 0

    # ---- scheduling ---------------------------------------------------------------------------------------
    def _slices(self) -> list[tuple[slice, slice]]:
        return tiling.blocks(self.shape[0], self.shape[1], self.block_size, self.symmetric)

    def _fill_store(self) -> Path:
        """Compute the blocks missing from the store (verifying the finished ones); the path of the matrix."""
        assert self.store is not None
        if not self._store_ready:

            def block_fn(rows: slice, cols: slice, on_diagonal: bool) -> dict[str, torch.Tensor]:
                return {self._STORE_NAME: self._block(rows, None if on_diagonal else cols)}

            filled = tiling.run_blocks(
                block_fn,
                [self._STORE_NAME],
                self.shape[0],
                self.shape[1],
                dtype=self.dtype,
                device=self.device,
                symmetric=self.symmetric,
                tile=self.block_size,
                store=self.store,
                key=self._store_key(),
                progress=self.progress,
                description="kernel blocks (to store)",
            )
            del filled  # unmap the files: products map one row panel at a time
            self._store_ready = True
        return self.store / f"{self._STORE_NAME}.npy"

    def _stored_blocks(self) -> Iterator[tuple[tuple[slice, slice], torch.Tensor]]:
        """The blocks of `_slices()` read from the store, mapping one row panel of the file at a time (so the
        process's resident memory is one panel, not the matrix)."""
        path = self._fill_store()
        todo = self._slices()
        panel_rows: slice | None = None
        panel = None
        for rows, cols in todo:
            if rows != panel_rows:
                panel = None  # drop the previous panel's mapping before mapping the next
                panel = np.load(path, mmap_mode="r")[rows]
                panel_rows = rows
            blk = torch.from_numpy(np.ascontiguousarray(panel[:, cols])).to(self.device)
            yield (rows, cols), blk
        panel = None

    def _blocks(self, desc: str):
        """(rows, cols), block pairs of the upper triangle (symmetric) or of the whole matrix, cached if room."""
        if self.store is not None:
            yield from self._stored_blocks()
            return
        todo = self._slices()
        missing = sum((s[0].start, s[1].start) not in self._cache for s in todo)
        disable = True if missing == 0 else (None if self.progress is None else not self.progress)
        bar = tqdm(total=len(todo), desc=desc, unit="block", disable=disable, leave=False)
        try:
            for rows, cols in todo:
                key = (rows.start, cols.start)
                blk = self._cache.get(key)
                if blk is None:
                    blk = self._block(rows, None if self.symmetric and rows == cols else cols)
                    if self.symmetric and rows == cols:
                        blk = torch.triu(blk) + torch.triu(blk, 1).T  # exactly symmetric
                    size = blk.numel() * blk.element_size()
                    if self.cached_bytes + size <= self._cache_limit:
                        self._cache[key] = blk
                        self.cached_bytes += size
                bar.update()
                yield (rows, cols), blk
        finally:
            bar.close()


class DenseKernel(KernelOperator):
    """A kernel matrix already in memory (n1, n2), as an operator (its products are plain matrix products)."""

    def __init__(self, matrix: Array, *, name: str = "matrix") -> None:
        k = as_float_tensor(matrix, name, ndim=2)
        n1, n2 = k.shape
        symmetric = n1 == n2 and bool(torch.equal(k, k.T))
        super().__init__(n1, n2, dtype=k.dtype, device=k.device, symmetric=False, cache=False)
        self.symmetric = symmetric
        self.matrix = k

    def _block(self, rows: Index, cols: Index) -> torch.Tensor:
        sub = self.matrix[rows]
        return sub[:, rows] if cols is None else sub[:, cols]

    def diagonal(self) -> torch.Tensor:
        return torch.diagonal(self.matrix)

    def columns(self, index: Sequence[int] | Array) -> torch.Tensor:
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device).reshape(-1)
        return self.matrix[:, idx]

    def matmul(self, v: Array) -> torch.Tensor:
        v = as_float_tensor(v, "v", ndim=None)
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(
                f"v must have shape ({self.shape[1]},) or ({self.shape[1]}, k), got {tuple(v.shape)}"
            )
        return self.matrix @ v.to(dtype=self.dtype, device=self.device)

    __matmul__ = matmul

    def to_dense(self) -> torch.Tensor:
        return self.matrix


class _InputsKernel(KernelOperator):
    """A kernel between the examples of x1 and x2 (x2 None: K(x1, x1), symmetric), one function per block."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        **kwargs: Any,
    ) -> None:
        self.x1 = x1
        self.x2 = x2
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        super().__init__(x1.shape[0], n2, dtype=x1.dtype, device=x1.device, symmetric=x2 is None, **kwargs)
        self._fn = fn

    def _block(self, rows: Index, cols: Index) -> torch.Tensor:
        xa = self.x1[rows]
        if cols is None:
            return self._fn(xa, None)
        xb = (self.x1 if self.x2 is None else self.x2)[cols]
        return self._fn(xa, xb)

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.x1, self.x2


class ArchKernel(_InputsKernel):
    """The exact infinite-width NNGP or NTK of an ntkit architecture on inputs x1 (and x2), block by block.

    Args:
        arch: any ntkit architecture (anything with `.kernel(x1, x2, get=..., memory_budget=...)`).
        x1: (n1, d), (n1, C, L) or (n1, C, H, W) inputs (tensor or numpy array); the dtype and device of the
            kernel are x1's.
        x2: second inputs of the same per-example shape, or None for the symmetric K(x1, x1).
        get: "ntk" or "nngp".
        memory_budget: working memory in bytes for one block and its recursion.
        cache: bytes of computed blocks kept for later products (True: all, False: none; None: half the free
            memory of the device).
        progress: a progress bar over blocks while some have to be computed (None: only on a terminal).
        store: a directory that keeps the computed blocks on disk (see the module docstring): resumable, checked
            against checksums, and keyed by the architecture's `fingerprint()`, `get` and the inputs.
    """

    def __init__(
        self,
        arch: HasKernel,
        x1: Array,
        x2: Array | None = None,
        *,
        get: str = "ntk",
        memory_budget: int | None = None,
        cache: int | bool | None = None,
        progress: bool | None = None,
        store: str | os.PathLike | None = None,
    ) -> None:
        if not callable(getattr(arch, "kernel", None)):
            raise TypeError(
                f"arch must be an ntkit architecture with a .kernel(x1, x2) method (e.g. ntkit.mlp(2, 512)), "
                f"got {type(arch).__name__}"
            )
        self.get = check_choice(get, "get", ("nngp", "ntk"))
        x1 = as_float_tensor(x1, "x1", ndim=None)
        if x2 is not None:
            x2 = as_float_tensor(x2, "x2", ndim=None, like=x1)
            if x2.shape[1:] != x1.shape[1:]:
                raise ValueError(
                    f"x1 and x2 must have the same per-example shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
                )
        if store is not None and not callable(getattr(arch, "fingerprint", None)):
            raise TypeError(
                f"store= keys the stored blocks by the architecture's .fingerprint(), which "
                f"{type(arch).__name__} lacks: use an ntkit architecture, or store=None"
            )
        self.arch = arch
        inner = None if memory_budget is None else max(1, int(memory_budget) // 2)

        def fn(xa: torch.Tensor, xb: torch.Tensor | None) -> torch.Tensor:
            k = arch.kernel(xa, xb, get=self.get, memory_budget=inner, progress=False)
            return getattr(k, self.get)

        super().__init__(fn, x1, x2, memory_budget=memory_budget, cache=cache, progress=progress, store=store)
        arch.kernel(
            x1[:1], None if x2 is None else x2[:1], get=self.get, progress=False
        )  # errors now, not later

    def _store_key(self) -> str:
        return tiling.fingerprint(
            "ntkit.linalg.ArchKernel", self.get, self.arch.fingerprint(), self.x1, self.x2
        )

    def cross(self, x_test: Array, **kwargs: int | bool | None) -> ArchKernel:
        """The operator K(x_test, x1) of the same architecture and kind (for predictions)."""
        kwargs.setdefault("memory_budget", self.memory_budget)
        kwargs.setdefault("progress", self.progress)
        kwargs.setdefault("cache", False)
        return ArchKernel(
            self.arch,
            as_float_tensor(x_test, "x_test", ndim=None, like=self.x1),
            self.x1,
            get=self.get,
            **kwargs,
        )


class EmpiricalKernel(_InputsKernel):
    """The empirical NTK (`outputs="mean"`) of a `torch.nn.Module` on x1 (and x2), block by block.

    Each block is `ntkit.empirical_ntk(model, x1[rows], x2[cols], memory_budget=...)`; other keyword arguments
    of `empirical_ntk` (method, params) go in `ntk_kwargs`. Caching and `store` as in `ArchKernel`; a store is
    keyed by the model's class, repr, parameters and buffers, `ntk_kwargs` and the inputs (not by the code of
    its forward: after editing a model's code, pass a new directory).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        x1: Array,
        x2: Array | None = None,
        *,
        memory_budget: int | None = None,
        cache: int | bool | None = None,
        progress: bool | None = None,
        ntk_kwargs: dict[str, Any] | None = None,
        store: str | os.PathLike | None = None,
    ) -> None:
        from ..empirical import empirical_ntk

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        param = next(iter(model.parameters()), None)
        like = torch.empty(0) if param is None else param
        x1 = torch.as_tensor(np.asarray(x1)) if isinstance(x1, np.ndarray) else x1
        x1 = as_float_tensor(x1, "x1", ndim=None, like=like)
        if x2 is not None:
            x2 = as_float_tensor(x2, "x2", ndim=None, like=x1)
        self.model = model
        extra = dict(ntk_kwargs or {})
        budget = memory_budget

        def fn(xa: torch.Tensor, xb: torch.Tensor | None) -> torch.Tensor:
            return empirical_ntk(model, xa, xb, outputs="mean", memory_budget=budget, progress=False, **extra)

        self._ntk_kwargs = extra
        super().__init__(fn, x1, x2, memory_budget=memory_budget, cache=cache, progress=progress, store=store)

    def _store_key(self) -> str:
        state = [(name, value) for name, value in self.model.state_dict().items()]
        return tiling.fingerprint(
            "ntkit.linalg.EmpiricalKernel",
            type(self.model).__module__,
            type(self.model).__qualname__,
            repr(self.model),
            *[part for pair in state for part in pair],
            *_flat(self._ntk_kwargs),
            self.x1,
            self.x2,
        )

    def cross(self, x_test: Array, **kwargs: int | bool | None) -> EmpiricalKernel:
        """The operator T(x_test, x1) of the same model."""
        kwargs.setdefault("memory_budget", self.memory_budget)
        kwargs.setdefault("cache", False)
        return EmpiricalKernel(
            self.model, as_float_tensor(x_test, "x_test", ndim=None, like=self.x1), self.x1, **kwargs
        )


class DaskKernel(KernelOperator):
    """A dask array kernel (n1, n2) as a `KernelOperator`: products, columns and diagonal computed by Dask.

    It lives here, not in `ntkit.distributed`, so that `as_operator` can wrap a dask array without importing
    the package that builds such arrays (which itself imports linalg): the dependency runs one way. Only Dask
    is needed, and only once an array is passed.
    """

    def __init__(self, array: dask.array.Array) -> None:
        if not hasattr(array, "__dask_graph__"):
            raise TypeError(f"array must be a dask.array.Array, got {type(array).__name__}")
        if array.ndim != 2:
            raise ValueError(f"a kernel must be 2-D, got shape {array.shape}")
        dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        n1, n2 = array.shape
        super().__init__(n1, n2, dtype=dtype, device=torch.device("cpu"), symmetric=False, cache=False)
        self.array = array

    def matmul(self, v: Array) -> torch.Tensor:
        v = as_float_tensor(v, "v", ndim=None).to(self.dtype)
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(
                f"v must have shape ({self.shape[1]},) or ({self.shape[1]}, k), got {tuple(v.shape)}"
            )
        return torch.from_numpy(np.asarray((self.array @ v.cpu().numpy()).compute()))

    __matmul__ = matmul

    def _block(self, rows: Any, cols: Any) -> torch.Tensor:
        r = rows if isinstance(rows, slice) else rows.cpu().numpy()
        c = r if cols is None else (cols if isinstance(cols, slice) else cols.cpu().numpy())
        sub = self.array[r][:, c]
        return torch.from_numpy(np.ascontiguousarray(sub.compute()))

    def columns(self, index: Sequence[int] | Array) -> torch.Tensor:
        idx = np.asarray(torch.as_tensor(index, dtype=torch.long).reshape(-1))
        return torch.from_numpy(np.ascontiguousarray(self.array[:, idx].compute()))

    def diagonal(self) -> torch.Tensor:
        import dask.array as da  # present: `array` is a dask array

        return torch.from_numpy(np.ascontiguousarray(da.diagonal(self.array).compute()))

    def to_dense(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array.compute()))


def _flat(options: dict[str, Any]) -> list[object]:
    """Keyword arguments as names, tensors and reprs for a fingerprint (a tensor's repr elides its entries)."""
    out: list[object] = []
    for name in sorted(options):
        value = options[name]
        out.append(name)
        if isinstance(value, dict):
            out.extend(_flat(value))
        elif isinstance(value, torch.Tensor):
            out.append(value)
        else:
            out.append(repr(value))
    return out


def as_operator(value: KernelOperator | Array | dask.array.Array, name: str = "kernel") -> KernelOperator:
    """A `KernelOperator` as it is; a matrix (tensor or numpy array) wrapped in `DenseKernel`."""
    if isinstance(value, KernelOperator):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return DenseKernel(value, name=name)
    if hasattr(value, "__dask_graph__"):
        return DaskKernel(value)
    raise TypeError(
        f"{name} must be a KernelOperator (ArchKernel, EmpiricalKernel, DenseKernel), a tensor or a numpy array, "
        f"got {type(value).__name__}"
    )
