"""Kernels as Dask arrays: blocks computed by Dask workers, and a kernel operator for ntkit.linalg's solvers.

Optional: `pip install -e ".[dask]"` (dask[array,distributed]). `kernel(arch_or_model, x1, x2=None)` returns a
`dask.array.Array` of shape (n1, n2) whose (chunk_size x chunk_size) blocks are each one task: the whole depth
recursion of `arch.kernel` (or `ntkit.empirical_ntk` for a `torch.nn.Module`) on a slice of rows against a
slice of columns. For K(x1, x1) only blocks on and above the diagonal are tasks; the others are their
transposes. It runs on any Dask scheduler: the default threads, processes, or a `dask.distributed` cluster
(`Client("tcp://scheduler:8786")` before computing; workers need ntkit and torch installed). A lost worker's
blocks are recomputed by Dask from the graph. `.to_zarr` / `dask.array.to_npy_stack` persist it.

`DaskKernel(array)` (also what `ntkit.linalg.solve` makes of a dask array) is a `KernelOperator` whose products
K @ v run on the cluster (`array @ v`, one task per block), so CG runs there: `ntkit.linalg.solve(kernel(...),
y, method="cg")`. Persist the array first (`array.persist()`) to keep the blocks on the workers between
iterations instead of recomputing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._validation import Array, HasKernel, as_float_tensor
from ..linalg.operators import KernelOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    import dask.array

__all__ = ["DaskKernel", "kernel"]


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ntkit.distributed needs Dask: pip install 'dask[array,distributed]' (or ntkit's [dask] extra)"
        ) from err
    return dask, da


def _block(source: Any, get: str, xa: np.ndarray, xb: np.ndarray | None, transpose: bool) -> np.ndarray:
    """One kernel block on a worker, as a float numpy array (transposed for the mirror of an upper block)."""
    a = torch.from_numpy(xa)
    b = None if xb is None else torch.from_numpy(xb)
    if isinstance(source, torch.nn.Module):
        from ..empirical import empirical_ntk

        out = empirical_ntk(source, a, b, progress=False)
    else:
        out = getattr(source.kernel(a, b, get=get, progress=False), get)
    out = out.detach().cpu().numpy()
    return np.ascontiguousarray(out.T) if transpose else out


def kernel(
    arch_or_model: HasKernel | torch.nn.Module,
    x1: Array,
    x2: Array | None = None,
    *,
    get: str = "ntk",
    chunk_size: int | None = None,
) -> dask.array.Array:
    """K(x1, x2) as a dask array of blocks computed by Dask workers (see the module docstring).

    Args:
        arch_or_model: an ntkit architecture (exact NNGP/NTK) or a `torch.nn.Module` (its empirical NTK,
            outputs="mean"; `get` must be "ntk").
        x1, x2: inputs (n, ...) as tensors or numpy arrays (CPU; they are shipped to the workers with the
            tasks). x2 None: the symmetric K(x1, x1), upper-triangle blocks only.
        get: "ntk" or "nngp".
        chunk_size: rows and columns per block (default 1024).
    """
    dask, da = _dask()
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")
    model = isinstance(arch_or_model, torch.nn.Module)
    if model and get != "ntk":
        raise ValueError("a torch.nn.Module has an empirical NTK only: get must be 'ntk'")
    if not model and not callable(getattr(arch_or_model, "kernel", None)):
        raise TypeError(
            f"arch_or_model must be an ntkit architecture or a torch.nn.Module, got {type(arch_or_model).__name__}"
        )
    a = as_float_tensor(x1, "x1", ndim=None).detach().cpu().numpy()
    b = None if x2 is None else as_float_tensor(x2, "x2", ndim=None).detach().cpu().numpy().astype(a.dtype)
    chunk = 1024 if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n1 = a.shape[0]
    n2 = n1 if b is None else b.shape[0]
    starts1 = list(range(0, n1, chunk))
    starts2 = list(range(0, n2, chunk))
    source = dask.delayed(arch_or_model, pure=True)
    rows = []
    blocks: dict[tuple[int, int], Any] = {}
    for bi, i in enumerate(starts1):
        row = []
        xa = a[i : i + chunk]
        for bj, j in enumerate(starts2):
            shape = (len(xa), min(j + chunk, n2) - j)
            if b is None and bj < bi:
                task = dask.delayed(np.transpose)(blocks[(bj, bi)])  # the mirror of an upper block
            elif b is None and bi == bj:
                task = dask.delayed(_block, pure=True)(source, get, xa, None, False)
            else:
                xb = (a if b is None else b)[j : j + chunk]
                task = dask.delayed(_block, pure=True)(source, get, xa, xb, False)
            blocks[(bi, bj)] = task
            row.append(da.from_delayed(task, shape=shape, dtype=a.dtype))
        rows.append(row)
    return da.block(rows)


class DaskKernel(KernelOperator):
    """A dask array kernel (n1, n2) as a `KernelOperator`: products, columns and diagonal computed by Dask."""

    def __init__(self, array: dask.array.Array) -> None:
        _dask()
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
        _, da = _dask()
        return torch.from_numpy(np.ascontiguousarray(da.diagonal(self.array).compute()))

    def to_dense(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array.compute()))
