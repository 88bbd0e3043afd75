"""Kernels as Dask arrays: blocks computed by Dask workers, and a kernel operator for ntkit.linalg's solvers.

Optional: `pip install -e ".[dask]"` (dask[array,distributed]). `kernel(arch_or_model, x1, x2=None)` returns a
`dask.array.Array` of shape (n1, n2) whose (chunk_size x chunk_size) blocks are each one task: the whole depth
recursion of `arch.kernel` (or `ntkit.empirical_ntk` for a `torch.nn.Module`) on a slice of rows against a
slice of columns. For K(x1, x1) only blocks on and above the diagonal are tasks; the others are their
transposes. It runs on any Dask scheduler: the default threads, processes, or a `dask.distributed` cluster
(`Client("tcp://scheduler:8786")` before computing; workers need ntkit and torch installed). A lost worker's
blocks are recomputed by Dask from the graph. `.to_zarr` / `dask.array.to_npy_stack` persist it.

Resuming an interrupted computation: `kernel(..., store=DIR)` (DIR on a filesystem every worker sees) makes each
block task look for its block in DIR first. A finished block is DIR/block_I_J.npy with its CRC-32 beside it
(block_I_J.crc32, written after the data reached the disk), so a task that finds both verifies and loads the
block instead of computing it, and a task that does not computes it and writes it (to a temporary name, then
renamed: a block is never half-written under its own name). After an interruption (a failed task, a cluster
gone, Ctrl-C) the same call with the same DIR recomputes only the blocks that were not finished; a block whose
bytes no longer match their checksum, or a DIR made for other inputs, raises `ntkit.tiling.StoreError` naming
the file. DIR/meta.json records what is stored (the fingerprint of the architecture or model, the inputs, `get`
and `chunk_size`).

`DaskKernel(array)` (also what `ntkit.linalg.solve` makes of a dask array) is a `KernelOperator` whose products
K @ v run on the cluster (`array @ v`, one task per block), so CG runs there: `ntkit.linalg.solve(kernel(...),
y, method="cg")`. Persist the array first (`array.persist()`) to keep the blocks on the workers between
iterations instead of recomputing them.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import tiling
from .._validation import Array, HasKernel, as_float_tensor
from ..linalg import DaskKernel

if TYPE_CHECKING:
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


_MODULE_LOCK = threading.Lock()


def _block(source: Any, get: str, xa: np.ndarray, xb: np.ndarray | None, transpose: bool) -> np.ndarray:
    """One kernel block on a worker, as a float numpy array (transposed for the mirror of an upper block)."""
    a = torch.from_numpy(xa)
    b = None if xb is None else torch.from_numpy(xb)
    if isinstance(source, torch.nn.Module):
        from ..empirical import empirical_ntk

        # torch.func.functional_call swaps the module's parameters in place while it runs, so two worker
        # threads sharing one module (a threaded scheduler, LocalCluster(processes=False)) would see each
        # other's parameters: one empirical block at a time per process (each still uses torch's threads).
        with _MODULE_LOCK:
            out = empirical_ntk(source, a, b, progress=False)
    else:
        out = getattr(source.kernel(a, b, get=get, progress=False), get)
    out = out.detach().cpu().numpy()
    return np.ascontiguousarray(out.T) if transpose else out


_STORE_FORMAT = 1


def _remedy(store: Path) -> str:
    return f"delete {str(store)!r} to start over, or pass another store= directory"


def _crc(block: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(block)):08x}"


def _stored_block(
    source: Any,
    get: str,
    xa: np.ndarray,
    xb: np.ndarray | None,
    store: str,
    name: str,
    shape: tuple[int, int],
) -> np.ndarray:
    """A block from the store when it is there (verified against its checksum), else computed and written."""
    root = Path(store)
    data, sums = root / f"{name}.npy", root / f"{name}.crc32"
    if sums.exists():
        try:
            block = np.load(data, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise tiling.StoreError(
                f"store={store!r} is damaged: {data} is missing or not a readable .npy file ({err}); "
                f"{_remedy(root)}"
            ) from err
        if block.shape != shape or _crc(block) != sums.read_text().strip():
            raise tiling.StoreError(
                f"store={store!r} is damaged: {data} does not match its checksum in {sums.name} (changed, "
                f"truncated or overwritten since it was written); {_remedy(root)}"
            )
        return block
    block = _block(source, get, xa, xb, False)
    partial = root / f"{name}.{os.getpid()}.partial.npy"
    with open(partial, "wb") as f:
        np.save(f, block, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, data)
    partial_sum = root / f"{name}.{os.getpid()}.partial.crc32"
    partial_sum.write_text(_crc(block))
    os.replace(partial_sum, sums)  # last: a checksum file marks a block whose data is complete on disk
    return block


def _source_key(source: HasKernel | torch.nn.Module) -> list[object]:
    """What identifies the computation: an architecture's fingerprint, or a model's class, repr and state."""
    if isinstance(source, torch.nn.Module):
        state = [part for item in source.state_dict().items() for part in item]
        return [type(source).__module__, type(source).__qualname__, repr(source), *state]
    if not callable(getattr(source, "fingerprint", None)):
        raise TypeError(
            f"store= identifies the stored blocks by the architecture's .fingerprint(), which "
            f"{type(source).__name__} lacks: use an ntkit architecture, or store=None"
        )
    return [source.fingerprint()]


def _open_store(store: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Create the store directory with its meta.json, or check an existing one holds this computation."""
    root = Path(store)
    meta_file = root / "meta.json"
    if root.exists() and not root.is_dir():
        raise tiling.StoreError(f"store={str(root)!r} is not a directory; pass a directory path")
    if meta_file.exists():
        try:
            old = json.loads(meta_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise tiling.StoreError(
                f"store={str(root)!r} is damaged: {meta_file} is not readable JSON ({err}); {_remedy(root)}"
            ) from err
        if old != meta:
            raise tiling.StoreError(
                f"store={str(root)!r} holds a different computation ({old}); use another directory or delete "
                "this one to start over"
            )
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial = root / "meta.json.partial"
        partial.write_text(json.dumps(meta))
        os.replace(partial, meta_file)
    except OSError as err:
        raise tiling.StoreError(
            f"store={str(root)!r} cannot be created: {err}; pass another directory"
        ) from err
    return root


def kernel(
    arch_or_model: HasKernel | torch.nn.Module,
    x1: Array,
    x2: Array | None = None,
    *,
    get: str = "ntk",
    chunk_size: int | None = None,
    store: str | os.PathLike | None = None,
) -> dask.array.Array:
    """K(x1, x2) as a dask array of blocks computed by Dask workers (see the module docstring).

    Args:
        arch_or_model: an ntkit architecture (exact NNGP/NTK) or a `torch.nn.Module` (its empirical NTK,
            outputs="mean"; `get` must be "ntk").
        x1, x2: inputs (n, ...) as tensors or numpy arrays (CPU; they are shipped to the workers with the
            tasks). x2 None: the symmetric K(x1, x1), upper-triangle blocks only.
        get: "ntk" or "nngp".
        chunk_size: rows and columns per block (default 1024).
        store: a directory every worker can read and write: finished blocks are kept there with checksums, and
            a later call with the same arguments loads them instead of recomputing (see the module docstring).
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
    # Dask builds the graph lazily: without these checks a bad shape would surface only inside a worker's task,
    # after the cluster has started computing.
    if a.ndim < 2:
        raise ValueError(
            f"x1 must have shape (n, ...) with the examples along its first axis, got shape {a.shape}"
        )
    if b is not None and b.shape[1:] != a.shape[1:]:
        raise ValueError(
            f"x1 and x2 must have the same per-example shape, got x1.shape={a.shape} and x2.shape={b.shape}"
        )
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise TypeError(
            f"store must be a directory path (str or os.PathLike) or None, got {type(store).__name__}"
        )
    chunk = 1024 if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n1 = a.shape[0]
    n2 = n1 if b is None else b.shape[0]
    root = None
    if store is not None:
        key = tiling.fingerprint(
            "ntkit.distributed.kernel",
            get,
            *_source_key(arch_or_model),
            torch.from_numpy(a),
            None if b is None else torch.from_numpy(b),
        )
        meta = {"format": _STORE_FORMAT, "key": key, "shape": [n1, n2], "dtype": str(a.dtype), "chunk": chunk}
        root = str(_open_store(store, meta))
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
            else:
                xb = None if b is None and bi == bj else (a if b is None else b)[j : j + chunk]
                if root is None:
                    task = dask.delayed(_block, pure=True)(source, get, xa, xb, False)
                else:
                    task = dask.delayed(_stored_block, pure=True)(
                        source, get, xa, xb, root, f"block_{bi}_{bj}", shape
                    )
            blocks[(bi, bj)] = task
            row.append(da.from_delayed(task, shape=shape, dtype=a.dtype))
        rows.append(row)
    return da.block(rows)
