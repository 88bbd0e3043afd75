"""The one block scheduler of ntkit: memory budget, symmetric K(X, X), devices, progress, resumable output.

Every kernel matrix in ntkit, infinite-width (`ntkit.layers`) and empirical (`ntkit.empirical`), is computed
block by block through `run_blocks`. Each block runs the whole computation (the full depth recursion, or a
contraction of two blocks' gradient features) for a slice of rows against a slice of columns, so the working
memory is a few blocks, whatever n is; `tile_size` and `block_size` plan the blocks from bytes per pair and per
example. For K(X, X) only blocks on and above the diagonal are computed; the rest is their mirror image. With
`store=DIR` the output lives in .npy files on disk (memory-mapped) next to a record of finished blocks, so
matrices larger than memory can be computed and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ._warnings import external_stacklevel

DEFAULT_MEMORY_BUDGET = 2**30
"""Working memory, in bytes, that one kernel computation (infinite-width or empirical) may use beside its
output: 1 GiB. Infinite-width tiles stop growing at 512 x 512 pairs well below it; per-example Jacobians and
layer features of empirical NTKs fill it."""

_PREFERRED_TILE = 512  # measured: 256-512 run ~20% faster than 1024 (cache-resident temporaries)
_MIN_TILE = 16
_MAX_BLOCK = 2048  # beyond this, larger example blocks buy no BLAS efficiency and only delay progress updates

BlockFn = Callable[[slice, slice, bool], dict[str, torch.Tensor]]


class MemoryBudgetError(MemoryError):
    """A kernel computation that cannot fit the memory it is allowed to use; the message says how to proceed."""


def tile_size(memory_budget: int, itemsize: int, live_blocks: float) -> int:
    """Side of a square block whose `live_blocks` temporaries of `itemsize` bytes fit in `memory_budget`."""
    side = int(math.sqrt(memory_budget / (live_blocks * itemsize)))
    if side < _MIN_TILE:
        need = live_blocks * itemsize * _MIN_TILE**2
        raise MemoryBudgetError(
            f"memory_budget={memory_budget} bytes is too small for even a {_MIN_TILE}x{_MIN_TILE} block "
            f"(needs {int(need)} bytes); raise memory_budget"
        )
    return min(side, _PREFERRED_TILE)


def block_size(n: int, bytes_per_example: float, bytes_per_pair: float, *, budget: int) -> int:
    """Largest block b <= n with 4 b per-example bytes (features and transients) + b**2 pair bytes <= budget.

    `bytes_per_example` is what one example's features take, `bytes_per_pair` the temporaries for one (row,
    column) pair. At least one example per block, whatever the budget: when a single example does not fit,
    `warn_if_one_example_exceeds` says so and the work goes on one example at a time.
    """
    warn_if_one_example_exceeds(budget, bytes_per_example, bytes_per_pair)
    a = max(bytes_per_pair, 0.0)
    b = 4.0 * bytes_per_example
    # the positive root of a s^2 + b s - budget = 0, in the form without cancellation (a may be tiny or 0)
    root = math.sqrt(b * b + 4.0 * a * budget)
    side = 2.0 * budget / (b + root) if b + root > 0 else math.inf
    return int(max(1, math.floor(min(n, _MAX_BLOCK, side))))


def warn_if_one_example_exceeds(budget: int, bytes_per_example: float, bytes_per_pair: float) -> None:
    """A RuntimeWarning naming memory_budget when one example per block (4 feature sets and one pair) exceeds it.

    Not an error: the per-example estimates are upper bounds of what torch allocates, and a block of one example
    is the least any method can do, so the computation proceeds; the warning says it uses more than the budget.
    """
    need = 4.0 * max(bytes_per_example, 0.0) + max(bytes_per_pair, 0.0)
    if need > budget:
        warnings.warn(
            f"memory_budget={budget} bytes is smaller than one example's block (~{need:.3g} bytes): computing "
            "one example per block, which uses more memory than the budget allows; raise memory_budget",
            RuntimeWarning,
            stacklevel=external_stacklevel(),
        )


_PROC_SELF = Path("/proc/self")
_PROC_MEMINFO = Path("/proc/meminfo")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`, or None when it cannot be told.

    CUDA: the device's free memory (`torch.cuda.mem_get_info`). CPU: the smallest of every limit that applies
    to this process: the system's MemAvailable, the memory limit of its cgroup and of every cgroup above it
    (v2 memory.max, v1 memory.limit_in_bytes; minus what the group uses, not counting reclaimable page cache),
    and the address-space limit RLIMIT_AS (minus the process's virtual size). A container or a job scheduler
    that caps memory is honoured, so a request that passes the check is not killed by the OOM killer or
    refused by the allocator. Every computation in ntkit (kernels, empirical NTKs, solvers) checks this one.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    limits = [_meminfo_available(), *_cgroup_available(), _address_space_available()]
    known = [limit for limit in limits if limit is not None]
    return max(0, min(known)) if known else None


def _read_int(path: Path) -> int | None:
    """The integer in a one-line file, None when missing, unreadable or "max" (no limit)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _meminfo_available() -> int | None:
    try:
        with open(_PROC_MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _inactive_file(directory: Path) -> int:
    """Reclaimable page cache of a cgroup (memory.stat's inactive_file), 0 when it cannot be read."""
    try:
        for line in (directory / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0


def _cgroup_available() -> list[int]:
    """Room left under the memory limit of this process's cgroup and of each one above it (v2 and v1)."""
    try:
        lines = (_PROC_SELF / "cgroup").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: "0::/path"
            base, limit_file, usage_file = _CGROUP_ROOT, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # cgroup v1: "4:memory:/path"
            base, limit_file, usage_file = (
                _CGROUP_ROOT / "memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
            if not base.is_dir():
                base = _CGROUP_ROOT / controllers
        else:
            continue
        # The group's own directory and all above it (a container sees its own group as the root).
        relative = Path(path.lstrip("/"))
        candidates = [base / relative, *(base / parent for parent in relative.parents)]
        for directory in dict.fromkeys(candidates):
            limit = _read_int(directory / limit_file)
            if limit is None or limit >= 2**62:  # "max" or v1's "unlimited" (a page-rounded 2**63 - 1)
                continue
            usage = _read_int(directory / usage_file) or 0
            out.append(limit - max(0, usage - _inactive_file(directory)))
    return out


def _address_space_available() -> int | None:
    """RLIMIT_AS (soft) minus the process's current virtual size, or None without a limit."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    used = 0
    try:
        for line in (_PROC_SELF / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        pass
    return soft - used


def blocks(n1: int, n2: int, tile: int | tuple[int, int], symmetric: bool) -> list[tuple[slice, slice]]:
    """Row and column slices of the blocks to compute, row-major. `tile` is a side, or (rows, columns) of a
    rectangular block.

    For K(X, X) only the upper triangle is computed: each row panel starts with the square block on the
    diagonal (its own rows as columns, even when blocks are rectangular), then the columns to its right. So no
    block other than a diagonal one reaches below the diagonal, and every entry is written once, by its block
    or by the mirror of the block holding its transpose.
    """
    rows, cols = (tile, tile) if isinstance(tile, int) else tile
    out = []
    for i in range(0, n1, rows):
        panel = slice(i, min(i + rows, n1))
        if symmetric:
            out.append((panel, panel))
        for j in range(panel.stop if symmetric else 0, n2, cols):
            out.append((panel, slice(j, min(j + cols, n2))))
    return out


def fingerprint(*parts: object) -> str:
    """A short hash of tensors and descriptions, to refuse resuming a stored run with different inputs."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().to("cpu").contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


class StoreError(ValueError):
    """A `store=` directory that cannot be used as it is: damaged, of another computation, or without room.

    The message names the file and what to do (delete the directory to start over, or pass another one). It is
    a ValueError: the directory is an argument, and code that handles bad arguments handles this too.
    """


_FORMAT = 2  # version of the store layout: 2 added per-block checksums
_COMMIT_SECONDS = 1.0  # how often finished blocks are made durable (data flushed, then their flags set)


def _remedy(path: Path) -> str:
    return f"delete {str(path)!r} to start over, or pass another store= directory"


def _npy_header(file: Path, store: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a .npy file, checking it is complete; StoreError if it is not."""
    if not file.is_file():
        raise StoreError(f"store={str(store)!r} is damaged: {file} is missing; {_remedy(store)}")
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise StoreError(
            f"store={str(store)!r} is damaged: {file} is not a readable .npy file ({err}); {_remedy(store)}"
        ) from err
    if fortran:
        raise StoreError(f"store={str(store)!r} is damaged: {file} is in Fortran order; {_remedy(store)}")
    expected = offset + math.prod(shape) * dtype.itemsize
    size = file.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise StoreError(
            f"store={str(store)!r} is damaged: {file} is {what} ({size} bytes, expected {expected} for "
            f"{dtype} of shape {tuple(shape)}); {_remedy(store)}"
        )
    return tuple(shape), dtype, offset


def _open(file: Path, store: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """Memory-map an existing .npy file of the expected dtype and shape, refusing any other."""
    found_shape, found_dtype, offset = _npy_header(file, store)
    if found_dtype != dtype or found_shape != shape:
        raise StoreError(
            f"store={str(store)!r} is damaged: {file} holds {found_dtype} of shape {found_shape}, but this "
            f"computation stores {dtype} of shape {shape}; {_remedy(store)}"
        )
    return np.memmap(file, mode="r+", dtype=dtype, shape=shape, offset=offset)


def _free_disk(path: Path) -> int | None:
    """Free bytes on the filesystem that holds (or will hold) `path`, or None when it cannot be told."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(shutil.disk_usage(probe).free)
    except OSError:
        return None


def _allocated(file: Path) -> int:
    """Bytes of `file` the filesystem has already allocated (the .npy files start sparse)."""
    st = file.stat()
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else min(st.st_size, blocks * 512)


class _Store:
    """Memory-mapped .npy outputs, a mask of finished blocks and a checksum per finished block, in one directory.

    Files: meta.json (what is computed, written last at creation), NAME.npy per output, done.npy (a flag per
    block) and checksums.npy (per block and output, CRC-32s of the block's bytes in the file and, for K(X, X), of its
    mirror). A block's data is flushed to disk before its checksum and flag are set,
    so a flag never marks data that was not written; on resume every finished block is checked against its
    checksum, so a flipped value, a zeroed block or a file replaced by another is reported, never returned.
    """

    def __init__(
        self,
        path: Path,
        names: Sequence[str],
        shape: tuple[int, int],
        dtype: torch.dtype,
        key: str,
        tile: int | tuple[int, int],
        todo: list[tuple[slice, slice]],
        symmetric: bool,
    ):
        self.path = path
        self.names = list(names)
        self.todo = todo
        self.symmetric = symmetric
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        n_blocks = len(todo)
        meta = {
            "format": _FORMAT,
            "names": self.names,
            "shape": list(shape),
            "dtype": str(np_dtype),
            "key": key,
            "tile": tile if isinstance(tile, int) else list(tile),  # as JSON reads it back
            "blocks": n_blocks,
            "symmetric": symmetric,
        }
        if path.exists() and not path.is_dir():
            raise StoreError(f"store={str(path)!r} is not a directory; pass a directory path")
        meta_file = path / "meta.json"
        files = {name: path / f"{name}.npy" for name in self.names}
        done_shape, sums_shape = (n_blocks,), (n_blocks, len(self.names), 2)
        if meta_file.exists():
            self._check_meta(meta_file, meta)
            self.arrays = {name: _open(files[name], path, shape, np_dtype) for name in self.names}
            self.done = _open(path / "done.npy", path, done_shape, np.dtype(np.bool_))
            self.sums = _open(path / "checksums.npy", path, sums_shape, np.dtype(np.uint32))
            self._check_space(sum(f.stat().st_size - _allocated(f) for f in files.values()))
            self._verify()
        else:
            need = len(self.names) * math.prod(shape) * np_dtype.itemsize + n_blocks * (
                1 + 8 * len(self.names)
            )
            self._check_space(need)
            try:
                path.mkdir(parents=True, exist_ok=True)
                self.arrays = {
                    name: np.lib.format.open_memmap(files[name], mode="w+", dtype=np_dtype, shape=shape)
                    for name in self.names
                }
                self.done = np.lib.format.open_memmap(
                    path / "done.npy", mode="w+", dtype=np.bool_, shape=done_shape
                )
                self.sums = np.lib.format.open_memmap(
                    path / "checksums.npy", mode="w+", dtype=np.uint32, shape=sums_shape
                )
                self.flush()
                # meta.json last, atomically: a directory without it was never fully created and starts over
                partial = path / "meta.json.partial"
                partial.write_text(json.dumps(meta))
                os.replace(partial, meta_file)
            except OSError as err:
                raise StoreError(
                    f"store={str(path)!r} cannot be created: {err}; pass another directory"
                ) from err

    def _check_meta(self, meta_file: Path, meta: dict) -> None:
        try:
            old = json.loads(meta_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(
                f"store={str(self.path)!r} is damaged: {meta_file} is not readable JSON ({err}); "
                f"{_remedy(self.path)}"
            ) from err
        if not isinstance(old, dict) or not {"names", "shape", "dtype", "key"} <= set(old):
            raise StoreError(
                f"store={str(self.path)!r} is damaged: {meta_file} does not describe a stored kernel; "
                f"{_remedy(self.path)}"
            )
        if old.get("format") != _FORMAT:
            raise StoreError(
                f"store={str(self.path)!r} was written by another version of ntkit (format "
                f"{old.get('format', 1)}, this one writes {_FORMAT}, with checksums); {_remedy(self.path)}"
            )
        if old != meta:
            raise StoreError(
                f"store={str(self.path)!r} holds a different computation ({old}); "
                "use another directory or delete this one to start over"
            )

    def _check_space(self, need: int) -> None:
        free = _free_disk(self.path)
        if free is not None and need > free:
            raise StoreError(
                f"store={str(self.path)!r} needs {need / 2**30:.3g} GiB of disk for the "
                f"{' and '.join(self.names)} matrices but only {free / 2**30:.3g} GiB is free on that disk; "
                "free some space, pass a directory on a larger disk, or request one matrix only "
                "(get='ntk' or get='nngp')"
            )

    def digest(self, index: int) -> np.ndarray:
        """Per output, CRC-32s of block `index` as it is in the file and of its mirror (0 where it has none).

        CRC-32 detects every burst of damage up to 32 bits (a flipped value) and all but 2**-32 of any other
        damage, at several GB/s; a cryptographic hash would cost 5x more on every block for no gain here.
        """
        rows, cols = self.todo[index]
        out = np.zeros((len(self.names), 2), dtype=np.uint32)
        seed = zlib.crc32(np.int64(index).tobytes())
        for i, name in enumerate(self.names):
            a = self.arrays[name]
            out[i, 0] = zlib.crc32(np.ascontiguousarray(a[rows, cols]), seed)
            if self.symmetric and rows != cols:
                out[i, 1] = zlib.crc32(np.ascontiguousarray(a[cols, rows]), seed)
        return out

    def _verify(self) -> None:
        for index in np.flatnonzero(self.done):
            found = self.digest(int(index))
            for i, name in enumerate(self.names):
                if not np.array_equal(found[i], self.sums[index, i]):
                    rows, cols = self.todo[index]
                    raise StoreError(
                        f"store={str(self.path)!r} is damaged: block {int(index)} (rows {rows.start}:{rows.stop}, "
                        f"columns {cols.start}:{cols.stop}) of {self.path / (name + '.npy')} does not match its "
                        f"checksum in checksums.npy (one of them was changed, truncated or overwritten since it was "
                        "written); "
                        f"{_remedy(self.path)}"
                    )

    def commit(self, finished: list[tuple[int, np.ndarray]]) -> None:
        """Make finished blocks durable: their data reaches the disk before their checksums and flags do."""
        for a in self.arrays.values():
            a.flush()
        for index, digest in finished:
            self.sums[index] = digest
        self.sums.flush()
        for index, _ in finished:
            self.done[index] = True
        self.done.flush()
        finished.clear()

    def flush(self) -> None:
        for a in self.arrays.values():
            a.flush()
        self.sums.flush()
        self.done.flush()


_NONFINITE_ADVICE = (
    "Its entries overflowed the range of the dtype (or an activation returned NaN). Use float64 inputs "
    "(x.double()), a smaller w_std or fewer layers, or normalised inputs (e.g. each row scaled to norm "
    "sqrt(d), so that S0(x, x) = 1)"
)
_MEMORY_ADVICE = (
    "Pass store='some/dir' to compute them out of core on disk (resumable), use float32 inputs to halve "
    "the size, request one matrix only with get='ntk' or get='nngp', or split x1 into chunks."
)


def _check_finite(name: str, block: torch.Tensor, rows: slice, cols: slice, advice: str) -> None:
    """Refuse a block with inf or NaN: a kernel entry that overflowed the dtype (or an activation's NaN)."""
    if bool(torch.isfinite(block.sum())):  # one pass, no mask: inf and NaN propagate through a sum
        return
    finite = torch.isfinite(block)
    if bool(finite.all()):  # finite entries whose sum overflowed
        return
    bad = int((~finite).sum())
    nan = int(torch.isnan(block).sum())
    raise ValueError(
        f"the {name} kernel is not finite: the block of rows {rows.start}:{rows.stop} and columns "
        f"{cols.start}:{cols.stop} holds {bad - nan} infinite and {nan} NaN value(s) in {block.dtype}. {advice}"
    )


def run_blocks(
    block_fn: BlockFn,
    names: Sequence[str],
    n1: int,
    n2: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    symmetric: bool,
    tile: int | tuple[int, int],
    tail: tuple[int, ...] = (),
    mirror: Callable[[torch.Tensor], torch.Tensor] | None = None,
    store: str | os.PathLike | None = None,
    key: str = "",
    progress: bool | None = None,
    description: str = "kernel",
    memory_advice: str = _MEMORY_ADVICE,
    nonfinite_advice: str = _NONFINITE_ADVICE,
) -> dict[str, torch.Tensor]:
    """Fill (n1, n2, *tail) arrays named `names` block by block with `block_fn(rows, cols, on_diagonal)`.

    For K(X, X) (`symmetric`) the blocks below the diagonal are `mirror(block)` of those above (default: the
    transpose of the two example axes; an empirical NTK with output axes swaps those too), and the blocks on the
    diagonal keep their upper triangle and its mirror image, so the result is exactly symmetric. `progress`:
    True always shows a bar, False never, None once the run has lasted 2 s, on a terminal or in a notebook (not
    in logs or CI), the same rule everywhere in ntkit.

    In memory, the outputs are allocated on `device` up front, after checking they fit. With `store`, they are
    memory-mapped .npy files in that directory (returned as CPU tensors sharing the files' memory), after checking
    the disk has room for them; finished blocks are recorded with a checksum, and a later call with the same
    `store` and `key` verifies them and computes only the blocks still missing. A damaged store raises
    `StoreError` naming the file. Every block is checked for inf and NaN before it is kept: a kernel that
    overflowed its dtype raises a ValueError saying so, instead of returning non-finite entries.
    """
    itemsize = dtype.itemsize
    shape = (n1, n2, *tail)
    out_bytes = len(names) * math.prod(shape) * itemsize
    free = available_memory(device) if store is None else None
    if free is not None and out_bytes > 0.9 * free:
        raise MemoryBudgetError(
            f"the {' and '.join(names)} matrices of shape {shape} in {dtype} need "
            f"{out_bytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is free on {device}. {memory_advice}"
        )
    if store is not None and tail:
        raise ValueError("store= holds (n1, n2) matrices only")
    flip = mirror if mirror is not None else (lambda block: block.transpose(0, 1))
    todo = blocks(n1, n2, tile, symmetric)
    if store is None:
        outputs = {name: torch.empty(shape, dtype=dtype, device=device) for name in names}
        done = np.zeros(len(todo), dtype=np.bool_)
        disk = None
    else:
        disk = _Store(Path(store), names, (n1, n2), dtype, key, tile, todo, symmetric)
        outputs = {name: torch.from_numpy(a) for name, a in disk.arrays.items()}
        done = disk.done
    finished: list[tuple[int, np.ndarray]] = []  # written to the files, not yet flagged done
    last_commit = time.monotonic()

    bar = tqdm(
        total=len(todo),
        initial=int(done.sum()),
        desc=description,
        unit="block",
        disable=None if progress is None else not progress,  # None: tqdm's rule, a bar on terminals only
        delay=0.0 if progress else 2.0,
        leave=False,
    )
    try:
        for index, (rows, cols) in enumerate(todo):
            if done[index]:
                continue
            on_diagonal = symmetric and rows == cols
            results = block_fn(rows, cols, on_diagonal)
            for name in names:
                _check_finite(name, results[name], rows, cols, nonfinite_advice)
            for name in names:
                block = results[name]
                if on_diagonal:
                    # Floating-point rounding need not be symmetric (BLAS, fused ops); K(X, X) must be exactly.
                    upper = torch.ones(block.shape[:2], dtype=torch.bool, device=block.device).triu_()
                    block = torch.where(upper.view(*upper.shape, *(1,) * len(tail)), block, flip(block))
                target = outputs[name]
                target[rows, cols] = block.to(target.device)
                if symmetric and not on_diagonal:
                    # A contiguous copy first: writing a transposed view into a strided one is 2x slower.
                    target[cols, rows] = flip(block).contiguous().to(target.device)
            if disk is None:
                done[index] = True
            else:
                finished.append((index, disk.digest(index)))
                if time.monotonic() - last_commit > _COMMIT_SECONDS:
                    disk.commit(finished)
                    last_commit = time.monotonic()
            bar.update()
    finally:
        bar.close()
        if disk is not None:
            disk.commit(finished)  # the blocks written completely before an interruption are kept
    return outputs
