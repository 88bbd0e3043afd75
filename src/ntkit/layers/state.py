"""The kernel state that every layer maps to a kernel state, and the tape of self-covariances the driver replays.

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
import math
from collections.abc import Callable
from typing import Any

import torch

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
        if self.tape is not None:
            replayed = self.tape.variances(self, cov)
            if replayed is not None:
                return replayed
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
        # Per record, the variances (spatial diagonals) of all inputs, computed once on first use and shared by
        # every replay of this recording; and what the latest replayed step handed out, to recognise it.
        self._variances: dict[int, torch.Tensor] = {}
        self._replayed: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    def replay(
        self, rows: slice, cols: slice | None, columns: SelfCovarianceTape | None = None
    ) -> SelfCovarianceTape:
        """A tape replaying these records for the examples `rows`, and those of `columns` (default: this tape)
        for `cols` (None: a diagonal tile, whose cov2 is cov1)."""
        tape = SelfCovarianceTape()
        tape.records = self.records
        tape._variances = self._variances
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
        cov1 = self.records[position][..., self._rows]
        cov2 = None if self._cols is None else self._columns.records[position][..., self._cols]
        self._replayed = (position, cov1, cov2)
        return {"cov1": cov1, "cov2": cov2}

    def variances(self, state: KernelState, cov: torch.Tensor) -> torch.Tensor | None:
        """`state.variances(cov)` if `cov` is what the latest step replayed (None otherwise): sliced from the
        variances of all inputs, which each record computes once instead of once per tile."""
        if self._replayed is None:
            return None
        position, cov1, cov2 = self._replayed
        if cov is cov1:
            source, index = self, self._rows
        elif cov is cov2:
            assert self._columns is not None
            source, index = self._columns, self._cols
        else:
            return None
        every = source._variances.get(position)
        if every is None:
            every = source._variances[position] = state.replace(tape=None).variances(source.records[position])
        return every[..., index].clone()  # a copy, as state.variances gives: the caller may write to it


class LayerError(ValueError):
    """An architecture that cannot be applied to its input; the message names the layer and what was wrong."""
