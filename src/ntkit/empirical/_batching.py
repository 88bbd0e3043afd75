"""Empirical NTKs on ntkit's one block scheduler (`ntkit.tiling.run_blocks`): features per block, then contractions.

Every method splits the computation into per-block "features" (per-example Jacobians, layer factors, ...) and
a contraction of a row block's features with a column block's. This module adapts that to the scheduler:
column features are cached when they fit the budget (so each example's features are computed once), a row
panel's features are computed once, and for K(X, X) only blocks on and above the diagonal are contracted, the
others being their mirror image (with the two output axes swapped, T_ab(x, x') = T_ba(x', x)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tiling
from . import _contract

DEFAULT_EMPIRICAL_BUDGET = tiling.DEFAULT_MEMORY_BUDGET
"""The default `memory_budget` of `empirical_ntk`: ntkit's one default, `ntkit.tiling.DEFAULT_MEMORY_BUDGET`."""

OUT_OF_MEMORY: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
"""The device out-of-memory error (torch.OutOfMemoryError; torch.cuda.OutOfMemoryError on torch versions without it). It
is a RuntimeError, so the fallbacks for models vmap cannot batch re-raise it first instead of looping."""

block_size = tiling.block_size

_MEMORY_ADVICE = (
    "Split x1 into chunks, use outputs='mean' or outputs='diagonal' instead of 'full', or use float32."
)
_NONFINITE_ADVICE = (
    "The products of the model's gradients overflowed the range of the dtype (the outputs themselves were finite "
    "on the probe): normalise the inputs (e.g. to unit variance per feature), use float64 (model.double()), or "
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
    """Fill the (n1, n2, *tail) kernel through `tiling.run_blocks`, computing features once per block.

    `contract(row_feats, col_feats, on_diagonal)` returns the (b1, b2, *tail) block; `shared_features` says
    that row and column features are of one kind, so for x2=None a block's features serve both roles. Row
    panels hold `batch` examples and column tiles `col_batch` (default: the same); a row panel's features are
    computed once (the scheduler runs blocks row panel by row panel), column features once when
    `cache_columns` says they fit.
    """
    symmetric = x2 is None
    cols_input = x1 if x2 is None else x2
    cols_batch = col_batch or batch
    cache: dict[tuple[int, int], Any] = {}
    panel: dict[str, Any] = {"rows": None, "features": None}

    def column(cols: slice) -> Any:
        key = (cols.start, cols.stop)
        if key in cache:
            return cache[key]
        feats = col_features(cols_input[cols])
        if cache_columns:
            cache[key] = feats
        return feats

    def block(rows: slice, cols: slice, on_diagonal: bool) -> dict[str, torch.Tensor]:
        if rows != panel["rows"]:
            panel["rows"] = rows
            shared = symmetric and shared_features and cols_batch == batch
            panel["features"] = column(rows) if shared else row_features(x1[rows])
        rows_feats = panel["features"]
        cols_feats = rows_feats if (on_diagonal and shared_features) else column(cols)
        return {"empirical": contract(rows_feats, cols_feats, on_diagonal)}

    out = tiling.run_blocks(
        block,
        ("empirical",),
        x1.shape[0],
        cols_input.shape[0],
        dtype=dtype,
        device=device,
        symmetric=symmetric,
        tile=(batch, cols_batch),
        tail=tail,
        mirror=_contract.mirror,
        progress=progress,
        description=description,
        memory_advice=_MEMORY_ADVICE,
        nonfinite_advice=_NONFINITE_ADVICE,
    )
    return out["empirical"]
