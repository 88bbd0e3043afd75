"""Infinite-width kernel matrices of any architecture: the tiled driver of the layer protocol, and its result."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .. import tiling
from .._validation import as_float_tensor, check_choice, check_real
from .base import KernelState, Layer, LayerError


@dataclass(frozen=True)
class Kernel:
    """NNGP and NTK matrices K(x1, x2) and T(x1, x2), each of shape (n1, n2).

    `nngp[i, j]` is the covariance of one output unit at x1[i] and x2[j] over random initialisations of the
    infinitely wide network (Neal 1996; Lee et al. 2018); `ntk[i, j]` its neural tangent kernel (Jacot et al.
    2018). A network with k outputs has the kernels `nngp * I_k` and `ntk * I_k`. A matrix that was not requested
    (see `get=` of `Serial.kernel`) is None.
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None

    def __repr__(self) -> str:
        def describe(m: torch.Tensor | None) -> str:
            return (
                "None" if m is None else f"Tensor(shape={tuple(m.shape)}, dtype={m.dtype}, device={m.device})"
            )

        return f"Kernel(nngp={describe(self.nngp)}, ntk={describe(self.ntk)})"


# Live temporaries per state entry while a tile's recursion runs: the NNGP and NTK blocks, the activation map's
# scratch, and for spatial states a padded copy and a window sum.
_LIVE_FEATURES = 6.0
_LIVE_SPATIAL = 9.0


def compute_kernel(
    arch: Layer,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    get: str | Sequence[str] = ("nngp", "ntk"),
    memory_budget: int | None = None,
    store: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Kernel:
    """The infinite-width NNGP and NTK of `arch` between the examples of `x1` and of `x2`.

    Args:
        x1: inputs, a floating tensor or numpy array: (n1, d) features, (n1, C, L) sequences or (n1, C, H, W)
            images (channels first).
        x2: second inputs of the same per-example shape; None computes K(x1, x1), using symmetry (only blocks
            on and above the diagonal are computed).
        get: "nngp", "ntk" or both; what is not requested is not computed (and is None in the result).
        memory_budget: bytes of working memory beside the output (default `tiling.DEFAULT_MEMORY_BUDGET`);
            the matrices are computed block by block, the whole depth recursion per block.
        store: a directory: write the matrices there as .npy files (memory-mapped, so they may exceed RAM),
            keeping finished blocks; calling again with the same directory resumes an interrupted run.
        progress: show a progress bar (None: only on a terminal).

    Returns:
        A `Kernel` whose matrices have shape (n1, n2) and x1's dtype and device (CPU tensors backed by the
        files when `store` is given).

    Cost: per pair of inputs and layer, O(1) for features, O(P) for spatial inputs read out by Flatten (the
    spatial diagonal suffices) and O(P^2) when a pooling layer needs the whole spatial covariance (P positions).
    """
    x1 = as_float_tensor(x1, "x1", ndim=None)
    _check_rank(x1, "x1")
    if x2 is not None:
        x2 = as_float_tensor(x2, "x2", ndim=None, like=x1)
        _check_rank(x2, "x2")
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(
                f"x1 and x2 must have the same per-example shape (the same number of features, channels and "
                f"positions), got x1.shape={tuple(x1.shape)} and "
                f"x2.shape={tuple(x2.shape)}"
            )
    names = _requested(get)
    budget = tiling.DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    budget = int(check_real(budget, "memory_budget", minimum=0.0, strict=True))
    in_shape = tuple(x1.shape[1:])
    out = arch.out_shape(in_shape)
    if len(out) == 0 or isinstance(out[0], tuple):
        raise LayerError(
            f"the architecture ends in {len(out)} branches: close every FanOut with FanInSum() or FanInConcat()"
        )
    if len(out) != 1:
        raise LayerError(
            f"the architecture's output has the spatial shape {out}: end it with Flatten() or GlobalAvgPool() "
            "(and a Dense readout), since its kernel is one number per pair of inputs"
        )
    full = arch.requires_full(False)
    need_ntk = "ntk" in names
    # One pair through the whole network first: every shape and Gaussianity error surfaces before heavy work.
    arch.map_state(input_state(x1[:1], x1[:1], full, need_ntk, same=True))

    symmetric = x2 is None
    xb = x1 if x2 is None else x2
    positions = math.prod(in_shape[1:])
    entries = positions * positions if full else positions
    live = (_LIVE_SPATIAL if len(in_shape) > 1 else _LIVE_FEATURES) * arch.block_cost * entries
    tile = _tile_side(budget, x1.element_size(), live, spatial=len(in_shape) > 1)

    def block(rows: slice, cols: slice, on_diagonal: bool) -> dict[str, torch.Tensor]:
        return _tile(arch, x1[rows], xb[cols], full, need_ntk, on_diagonal)

    key = tiling.fingerprint(arch.fingerprint(), x1, x2) if store is not None else ""
    result = tiling.run_blocks(
        block,
        names,
        x1.shape[0],
        xb.shape[0],
        dtype=x1.dtype,
        device=x1.device,
        symmetric=symmetric,
        tile=tile,
        store=store,
        key=key,
        progress=progress,
        description="infinite-width kernel",
    )
    return Kernel(nngp=result.get("nngp"), ntk=result.get("ntk"))


def _check_rank(x: torch.Tensor, name: str) -> None:
    if not 2 <= x.ndim <= 4:
        raise ValueError(
            f"{name} must be 2-D (n, d) features, 3-D (n, C, L) sequences or 4-D (n, C, H, W) images, got shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[0] == 0 or any(size == 0 for size in x.shape[1:]):
        raise ValueError(
            f"{name} must have at least one example and no empty axis, got shape {tuple(x.shape)}"
        )


def _tile_side(budget: int, itemsize: int, live_per_pair: float, spatial: bool) -> int:
    """Side of a square tile of pairs within `budget`; spatial states (kilobytes per pair) may use tiles
    smaller than the scheduler's usual minimum."""
    side = int(math.sqrt(budget / (live_per_pair * itemsize)))
    if side >= 16 or not spatial:
        return tiling.tile_size(budget, itemsize, live_per_pair)
    if side < 1:
        raise tiling.MemoryBudgetError(
            f"memory_budget={budget} bytes is too small for even one pair of inputs (needs "
            f"{int(live_per_pair * itemsize)} bytes for this architecture's spatial covariances); raise "
            "memory_budget"
        )
    return side


def input_state(xa: torch.Tensor, xb: torch.Tensor, full: bool, need_ntk: bool, same: bool) -> KernelState:
    """The state of the inputs: S0(x, x')[p, p'] = sum_c x_c,p x'_c,p' / C (x.x' / d for features).

    `same` marks a diagonal tile (xb is xa): the columns' self-covariances are the rows', and the pairs of an
    example with itself get exactly its self-covariance (not a differently rounded product), so identical
    inputs stay identical through the recursion.
    """
    a, b, channels = xa.shape[0], xb.shape[0], xa.shape[1]
    spatial = tuple(xa.shape[2:])
    positions = math.prod(spatial)
    if not spatial:
        nngp = torch.mm(xa, xb.T).div_(channels)
        cov1 = xa.pow(2).sum(dim=1).div_(channels)
        cov2 = None if same else xb.pow(2).sum(dim=1).div_(channels)
        if same:
            nngp.diagonal().copy_(cov1)
    else:
        ua = xa.reshape(a, channels, positions)
        ub = xb.reshape(b, channels, positions)
        if full:
            rows = ua.transpose(1, 2).reshape(a * positions, channels)
            cols = ub.transpose(1, 2).reshape(b * positions, channels)
            gram = torch.mm(rows, cols.T).div_(channels)
            nngp = gram.view(a, positions, b, positions).permute(0, 2, 1, 3).reshape(a, b, *spatial, *spatial)

            def self_cov(u: torch.Tensor) -> torch.Tensor:
                return torch.bmm(u.transpose(1, 2), u).div_(channels).reshape(u.shape[0], *spatial, *spatial)
        else:
            nngp = torch.einsum("icp,jcp->ijp", ua, ub).div_(channels).reshape(a, b, *spatial)

            def self_cov(u: torch.Tensor) -> torch.Tensor:
                return u.pow(2).sum(dim=1).div_(channels).reshape(u.shape[0], *spatial)

        cov1 = self_cov(ua)
        cov2 = None if same else self_cov(ub)
        if same:
            nngp.diagonal(dim1=0, dim2=1).copy_(cov1.movedim(0, -1))
    return KernelState(
        nngp=nngp,
        ntk=None,
        cov1=cov1,
        cov2=cov2,
        shape=tuple(xa.shape[1:]),
        full=full,
        gaussian=False,
        need_ntk=need_ntk,
    )


def _tile(
    arch: Layer, xa: torch.Tensor, xb: torch.Tensor, full: bool, need_ntk: bool, on_diagonal: bool
) -> dict[str, torch.Tensor]:
    """The whole recursion for one tile of rows `xa` against columns `xb`: (a, b) NNGP and NTK blocks."""
    state = arch.map_state(input_state(xa, xb, full, need_ntk, same=on_diagonal))
    if on_diagonal:
        # Identical inputs: the diagonal is each example's own variance, exactly as its self-covariance says.
        state.nngp.diagonal().copy_(state.cov1)
    ntk = state.ntk
    if need_ntk and ntk is None:  # nothing trainable: the NTK is zero
        ntk = torch.zeros_like(state.nngp)
    return {"nngp": state.nngp, "ntk": ntk}


def _requested(get: str | Iterable[str]) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise ValueError("get must name at least one of 'nngp', 'ntk'")
    for name in names:
        check_choice(name, "get", ("nngp", "ntk"))
    return tuple(dict.fromkeys(names))
