"""Block scheduling for empirical NTKs: rows of x1 against columns of x2 within a memory budget.

Every method splits the computation into per-block "features" (per-example Jacobians, layer factors, ...) and
a contraction of a row block's features with a column block's. This module runs that schedule: the output is
allocated once, column features are cached when they fit the budget (so each example's features are computed
once), and for K(X, X) only blocks on and above the diagonal are contracted, the others being their transpose
(with the two output axes swapped, T_ab(x, x') = T_ba(x', x)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import tiling
from . import _contract

DEFAULT_EMPIRICAL_BUDGET = 2**30
"""Working memory, in bytes, that one empirical NTK computation may use beside its output (1 GiB): the default
of `empirical_ntk(memory_budget=None)`. Larger than `ntkit.tiling.DEFAULT_MEMORY_BUDGET` (256 MiB) because
per-example Jacobians and layer features, not kernel tiles, fill it."""

OUT_OF_MEMORY: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
"""The device out-of-memory error (torch.OutOfMemoryError; torch.cuda.OutOfMemoryError on torch versions without it). It
is a RuntimeError, so the fallbacks for models vmap cannot batch re-raise it first instead of looping."""

_MAX_BLOCK = (
    2048  # beyond this, larger blocks buy no BLAS efficiency and only delay the first progress update
)


def block_size(
    n: int,
    bytes_per_example: float,
    bytes_per_pair: float,
    *,
    budget: int = DEFAULT_EMPIRICAL_BUDGET,
) -> int:
    """Largest block b <= n with 4 b per-example bytes (features and transients) + b**2 pair bytes <= budget.

    `bytes_per_example` is what one example's features take, `bytes_per_pair` the contraction's temporaries
    for one (row, column) pair. At least one example per block, whatever the budget: a single example that
    does not fit is the caller's problem to report.
    """
    a = max(bytes_per_pair, 1e-12)
    b = 4.0 * bytes_per_example
    # a s^2 + b s - budget = 0
    side = (-b + math.sqrt(b * b + 4.0 * a * budget)) / (2.0 * a)
    return int(max(1, min(n, _MAX_BLOCK, math.floor(side))))


def _tiles(n1: int, n2: int, rows: int, cols: int, symmetric: bool) -> list[tuple[slice, slice]]:
    """Row panels of `rows` examples, each swept by column tiles of `cols`; for K(X, X) only columns from the
    panel's first row on (tiles that straddle the diagonal are computed whole, and mirrored consistently)."""
    out = []
    for i in range(0, n1, rows):
        for j in range(i if symmetric else 0, n2, cols):
            out.append((slice(i, min(i + rows, n1)), slice(j, min(j + cols, n2))))
    return out


def _check_finite(block: torch.Tensor, rows: slice, cols: slice, symmetric: bool) -> None:
    """Refuse a block with inf or NaN: gradient products that overflowed the dtype return no kernel at all."""
    if bool(torch.isfinite(block.sum())):  # one pass, no mask: inf and NaN propagate through a sum
        return
    finite = torch.isfinite(block)
    if bool(finite.all()):  # finite entries whose sum overflowed
        return
    bad = int((~finite).sum())
    columns = "x1" if symmetric else "x2"
    raise ValueError(
        f"the empirical NTK is not finite: the block of x1 rows {rows.start}:{rows.stop} and {columns} rows "
        f"{cols.start}:{cols.stop} holds {bad} infinite or NaN value(s) in {block.dtype}. The products of the "
        "model's gradients overflowed the range of the dtype (the outputs themselves were finite on the probe): "
        "normalise the inputs (e.g. to unit variance per feature), use float64 (model.double()), or "
        "initialise the model with smaller weights"
    )


def run_blocks(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    row_features: Callable[[torch.Tensor], Any],
    col_features: Callable[[torch.Tensor], Any],
    contract: Callable[[Any, Any, bool], torch.Tensor],
    tail: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    batch: int,
    cache_columns: bool,
    col_batch: int | None = None,
    shared_features: bool,
    progress: bool | None,
    description: str,
) -> torch.Tensor:
    """Fill the (n1, n2, *tail) kernel block by block.

    `contract(row_feats, col_feats, on_diagonal)` returns the (b1, b2, *tail) block; `shared_features` says
    that row and column features are of one kind, so for x2=None a block's features serve both roles. Row
    panels hold `batch` examples and column tiles `col_batch` (default: the same); a row panel's features are
    computed once.
    """
    symmetric = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    cols_input = x1 if x2 is None else x2
    itemsize = dtype.itemsize
    out_bytes = n1 * n2 * math.prod(tail) * itemsize
    free = tiling.available_memory(device)
    if free is not None and out_bytes > 0.9 * free:
        raise tiling.MemoryBudgetError(
            f"the empirical NTK of shape {(n1, n2, *tail)} in {dtype} needs {out_bytes / 2**30:.2f} GiB but "
            f"only {free / 2**30:.2f} GiB is free on {device}; split x1 into chunks, use outputs='mean' or "
            "outputs='diagonal' instead of 'full', or use float32"
        )
    out = torch.empty((n1, n2, *tail), dtype=dtype, device=device)
    todo = _tiles(n1, n2, batch, col_batch or batch, symmetric)
    cache: dict[tuple[int, int], Any] = {}

    def column(cols: slice) -> Any:
        key = (cols.start, cols.stop)
        if key in cache:
            return cache[key]
        feats = col_features(cols_input[cols])
        if cache_columns:
            cache[key] = feats
        return feats

    # progress=None: a bar only when the run lasts more than a couple of seconds
    bar = tqdm(
        total=len(todo),
        desc=description,
        unit="block",
        disable=progress is False,
        delay=0.0 if progress else 2.0,
        leave=False,
    )
    try:
        current_rows: slice | None = None
        rows_feats: Any = None
        for rows, cols in todo:
            if rows != current_rows:
                current_rows = rows
                if symmetric and shared_features and (col_batch or batch) == batch:
                    rows_feats = column(rows)
                else:
                    rows_feats = row_features(x1[rows])
            on_diagonal = symmetric and rows == cols
            cols_feats = rows_feats if (on_diagonal and shared_features) else column(cols)
            block = contract(rows_feats, cols_feats, on_diagonal)
            _check_finite(block, rows, cols, cols_input is x1)
            out[rows, cols] = block
            if symmetric and not on_diagonal:
                out[cols, rows] = _contract.mirror(block)
            del block
            bar.update()
    finally:
        bar.close()
    return out
