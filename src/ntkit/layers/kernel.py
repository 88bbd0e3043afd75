"""Infinite-width kernel matrices of any architecture: the tiled driver of the layer protocol, and its result."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import tiling
from .._validation import as_float_tensor, check_choice, check_real
from . import _fused
from .state import KernelState, LayerError, SelfCovarianceTape

if TYPE_CHECKING:
    from .base import Layer


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
_CACHE_ENTRIES = 2**18


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
        progress: show a progress bar: True always, False never, None once the run has lasted 2 seconds, on a
            terminal or in a notebook.

    Returns:
        A `Kernel` whose matrices have shape (n1, n2) and x1's dtype and device (CPU tensors backed by the
        files when `store` is given).

    Cost: per pair of inputs and layer, O(1) for features, O(P) for spatial inputs read out by Flatten (the
    spatial diagonal suffices) and O(P^2) when a pooling layer needs the whole spatial covariance (P positions).
    """
    # The kernel is not differentiated with respect to the inputs (the tiles are written in place, which
    # autograd cannot follow): inputs that require grad are detached, and the result never requires grad.
    x1 = as_float_tensor(x1, "x1", ndim=None).detach()
    _check_rank(x1, "x1")
    if x2 is not None:
        x2 = as_float_tensor(x2, "x2", ndim=None, like=x1).detach()
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
    # One pair through the whole network first: every shape and Gaussianity error surfaces before heavy work,
    # and the probe's tape says how many self-covariances a full recording holds.
    probe = _record(arch, x1[:1], full, need_ntk)

    symmetric = x2 is None
    xb = x1 if x2 is None else x2
    itemsize = x1.element_size()
    positions = math.prod(in_shape[1:])
    entries = positions * positions if full else positions
    cov1 = _self_covariance(x1, full)
    cov2 = None if symmetric else _self_covariance(xb, full)
    # Spatial states: the self-covariances of all inputs after every layer, recorded once (see
    # SelfCovarianceTape), when they take at most half the budget; otherwise each tile computes its own. For
    # features the per-tile vectors cost nothing next to a tile's (a, b) blocks.
    examples = x1.shape[0] + (0 if symmetric else xb.shape[0])
    tape_bytes = (len(probe.records) + 1) * entries * examples * itemsize
    tape1 = tape2 = None
    if len(in_shape) > 1 and tape_bytes <= budget // 2:
        tape1 = _record(arch, x1, full, need_ntk, check=True)
        tape2 = tape1 if symmetric else _record(arch, xb, full, need_ntk, check=True)
        budget -= tape_bytes
    live = (_LIVE_SPATIAL if len(in_shape) > 1 else _LIVE_FEATURES) * arch.block_cost * entries
    tile = _tile_side(budget, itemsize, live, spatial=len(in_shape) > 1)

    def block(rows: slice, cols: slice, on_diagonal: bool) -> dict[str, torch.Tensor]:
        rows_cov = cov1[..., rows]
        cols_cov = None if on_diagonal else (cov1 if cov2 is None else cov2)[..., cols]
        replay = None if tape1 is None else tape1.replay(rows, None if on_diagonal else cols, tape2)
        return _tile(arch, x1[rows], xb[cols], rows_cov, cols_cov, full, need_ntk, replay)

    key = tiling.fingerprint(arch.fingerprint(), x1, x2) if store is not None else ""
    # Fused loops (see _fused) for spatial states, where the work amortises compiling them.
    pairs = x1.shape[0] * (x1.shape[0] + 1) / 2 if symmetric else x1.shape[0] * xb.shape[0]
    fuse = len(in_shape) > 1 and _fused.wanted(pairs * entries * len(probe.records))
    with _fused.enabled(fuse):
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
    if not spatial:
        return tiling.tile_size(budget, itemsize, live_per_pair)
    # The spatial recursion is a long chain of passes over each tile (window sums, the activation's steps):
    # tiles of about _CACHE_ENTRIES entries per tensor stay in cache, which was measured ~3x faster than
    # tiles sized by the budget alone.
    side = min(side, max(1, int(math.sqrt(_CACHE_ENTRIES * _LIVE_SPATIAL / live_per_pair))))
    if side < 1:
        raise tiling.MemoryBudgetError(
            f"memory_budget={budget} bytes is too small for even one pair of inputs (needs "
            f"{int(live_per_pair * itemsize)} bytes for this architecture's spatial covariances); raise "
            "memory_budget"
        )
    return side


def _self_covariance(x: torch.Tensor, full: bool) -> torch.Tensor:
    """S0(x, x)[p, p'] = sum_c x_c,p x_c,p' / C of every example, (*pos, n) (x.x / d for features)."""
    n, channels = x.shape[0], x.shape[1]
    spatial = tuple(x.shape[2:])
    if not spatial:
        return x.pow(2).sum(dim=1).div_(channels)
    u = x.reshape(n, channels, math.prod(spatial))
    if not full:
        return u.pow(2).sum(dim=1).div_(channels).T.reshape(*spatial, n)
    cov = torch.bmm(u.transpose(1, 2), u).div_(channels)  # (n, P, P)
    return cov.permute(1, 2, 0).reshape(*spatial, *spatial, n)


def _record(
    arch: Layer, x: torch.Tensor, full: bool, need_ntk: bool, check: bool = False
) -> SelfCovarianceTape:
    """The self-covariances of every example of `x` after every layer: the network run on the pairs of each
    example with the first one, recording (`check`: warn if an output variance underflowed)."""
    tape = SelfCovarianceTape()
    first = x[:1]
    cov = _self_covariance(x, full)
    final = arch.map_state(_state(x, first, cov, _self_covariance(first, full), full, need_ntk, tape))
    if check:
        _check_underflow(cov, final.cov1)
    return tape


def _state(
    xa: torch.Tensor,
    xb: torch.Tensor,
    cov1: torch.Tensor,
    cov2: torch.Tensor | None,
    full: bool,
    need_ntk: bool,
    tape: SelfCovarianceTape | None,
) -> KernelState:
    """The state of the inputs: S0(x, x')[p, p'] = sum_c x_c,p x'_c,p' / C (x.x' / d for features).

    `cov2` None marks a diagonal tile (xb is xa): the columns' self-covariances are the rows', and the pairs of
    an example with itself get exactly its self-covariance (not a differently rounded product), so identical
    inputs stay identical through the recursion.
    """
    a, b, channels = xa.shape[0], xb.shape[0], xa.shape[1]
    spatial = tuple(xa.shape[2:])
    positions = math.prod(spatial)
    if not spatial:
        nngp = torch.mm(xa, xb.T).div_(channels)
    else:
        ua = xa.reshape(a, channels, positions)
        ub = xb.reshape(b, channels, positions)
        if full:
            rows = ua.permute(2, 0, 1).reshape(positions * a, channels)
            cols = ub.permute(2, 0, 1).reshape(positions * b, channels)
            gram = torch.mm(rows, cols.T).div_(channels).view(positions, a, positions, b)
            nngp = gram.permute(0, 2, 1, 3).reshape(*spatial, *spatial, a, b)
        else:
            nngp = torch.einsum("icp,jcp->pij", ua, ub).div_(channels).reshape(*spatial, a, b)
    if cov2 is None and a == b:
        nngp.diagonal(dim1=-2, dim2=-1).copy_(cov1)
    return KernelState(
        nngp=nngp,
        ntk=None,
        cov1=cov1,
        cov2=cov2,
        shape=tuple(xa.shape[1:]),
        full=full,
        gaussian=False,
        need_ntk=need_ntk,
        tape=tape,
    )


def _tile(
    arch: Layer,
    xa: torch.Tensor,
    xb: torch.Tensor,
    cov1: torch.Tensor,
    cov2: torch.Tensor | None,
    full: bool,
    need_ntk: bool,
    tape: SelfCovarianceTape | None,
) -> dict[str, torch.Tensor]:
    """The whole recursion for one tile of rows `xa` against columns `xb`: (a, b) NNGP and NTK blocks."""
    state = arch.map_state(_state(xa, xb, cov1, cov2, full, need_ntk, tape))
    if tape is None:  # (with a tape, the recording checked every input once)
        _check_underflow(cov1, state.cov1)
        if cov2 is not None:
            _check_underflow(cov2, state.cov2)
    if cov2 is None:
        # Identical inputs: the diagonal is each example's own variance, exactly as its self-covariance says.
        state.nngp.diagonal().copy_(state.cov1)
    ntk = state.ntk
    if need_ntk and ntk is None:  # nothing trainable: the NTK is zero
        ntk = torch.zeros_like(state.nngp)
    return {"nngp": state.nngp, "ntk": ntk}


class KernelUnderflowWarning(RuntimeWarning):
    """The network's output variance of inputs with non-zero variance underflowed to zero (or subnormals)."""


def _check_underflow(before: torch.Tensor, after: torch.Tensor | None) -> None:
    """Warn when inputs of non-zero variance leave the network with a variance below the dtype's smallest
    normal number: the kernel entries have underflowed (to exactly zero, or with lost digits), as in deep
    networks whose weight variance shrinks the signal at every layer."""
    if after is None or after.shape[-1:] != before.shape[-1:]:
        return
    tiny = torch.finfo(after.dtype).tiny
    lost = (after.reshape(-1, after.shape[-1]) < tiny).any(0) & (
        before.reshape(-1, before.shape[-1]) > 0
    ).any(0)
    if bool(lost.any()):
        warnings.warn(
            f"the infinite-width kernel underflowed: {int(lost.sum())} input(s) with non-zero variance leave the "
            f"network with a variance below {tiny:.3g}, the smallest normal {after.dtype} number, so their kernel "
            "entries are zero or have lost their digits. The variance shrinks at every layer: use w_std at the "
            "edge of chaos (ntkit.layers.edge_of_chaos(activation)) or a bias (b_std > 0), fewer layers, or "
            "float64 inputs",
            KernelUnderflowWarning,
            stacklevel=2,
        )


def _requested(get: str | Iterable[str]) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise ValueError("get must name at least one of 'nngp', 'ntk'")
    for name in names:
        check_choice(name, "get", ("nngp", "ntk"))
    return tuple(dict.fromkeys(names))
