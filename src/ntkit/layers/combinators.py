"""Combinators: layers applied in sequence, and branches that split and merge. They only loop over the protocol.

Branches of an infinitely wide network are independent Gaussian processes (their last layers have independent
weights), so a sum of branches has the sum of their kernels, and a concatenation along channels the average of
their kernels weighted by their channel counts (Novak et al. 2019; neural-tangents' `FanInSum`, `FanInConcat`).
`Residual(*layers)` is x + Serial(*layers)(x) (He et al. 2016), whose kernels are those of the input plus those
of the branch: for its output to be Gaussian (so that an activation may follow) its input must be Gaussian
pre-activations, e.g. `Conv(...), Residual(ReLU(), Conv(...), ReLU(), Conv(...))`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_int
from .activations import Activation, ReLU
from .base import Layer
from .dense import Dense
from .state import KernelState, LayerError, Shape

MultiShape = Shape | tuple[Shape, ...]
MultiState = KernelState | tuple[KernelState, ...]


def _is_multi(shape: MultiShape) -> bool:
    return len(shape) > 0 and isinstance(shape[0], tuple)


def _name(layer: Layer) -> str:
    """A one-line name for error messages: leaf layers print whole, combinators by their type."""
    return type(layer).__name__ if isinstance(layer, _Container) else repr(layer)


def _clone(state: KernelState) -> KernelState:
    """An independent copy, for a branch that will overwrite its state in place."""
    return state.replace(
        nngp=state.nngp.clone(),
        ntk=None if state.ntk is None else state.ntk.clone(),
        cov1=state.cov1.clone(),
        cov2=None if state.cov2 is None else state.cov2.clone(),
    )


class _Container(Layer):
    """Layers that hold layers: errors from inside say where (`layers[2] Conv(...): ...`)."""

    layers: tuple[Layer, ...]

    def _config(self) -> tuple:
        return self.layers

    @property
    def block_cost(self) -> float:  # type: ignore[override]
        return max([1.0] + [layer.block_cost for layer in self.layers])

    @staticmethod
    def _check_layers(layers: Sequence[object], what: str) -> tuple[Layer, ...]:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"{what}[{i}] must be an ntkit layer (e.g. ntkit.layers.Dense(512) or ReLU()), "
                    f"got {type(layer).__name__}"
                )
        return tuple(layers)


class Serial(_Container):
    """An architecture: layers applied one after the other, described once for finite and infinite width.

    `Serial(Dense(512), ReLU(), Dense(1))`, or convolutional, `Serial(Conv(64), ReLU(), Conv(64), ReLU(),
    GlobalAvgPool(), Dense(10))`, gives
    - `kernel(x1, x2)`: the exact NNGP K and NTK T of the infinitely wide network (Lee et al. 2018; Jacot et al.
      2018; Novak et al. 2019; Arora et al. 2019), by the recursion over layers in docs/architecture.md, starting
      from the input covariance S0(x, x')[p, p'] = sum_c x_c,p x'_c,p' / C;
    - `build(in_shape)`: the finite network with exactly the same parametrization, whose empirical NTK
      approaches T as the widths (channels) grow.

    A Serial is itself a layer, so it nests inside other Serials and branches.
    """

    def __init__(self, *layers: Layer) -> None:
        layers = self._check_layers(layers, "layers")
        if not layers:
            raise ValueError("layers must not be empty: pass at least one layer, e.g. Serial(Dense(1))")
        self.layers = layers

    def __repr__(self) -> str:
        inner = ",\n".join("    " + repr(layer).replace("\n", "\n    ") for layer in self.layers)
        return f"{type(self).__name__}(\n{inner}\n)"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        if not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}; use arch.layers for slices")
        return self.layers[index]

    @property
    def out_features(self) -> int:
        """Number of outputs of the finite network: the width of the last layer that has one."""
        for layer in reversed(self.layers):
            width = getattr(layer, "width", None) or getattr(layer, "out_features", None)
            if width:
                return int(width)
        raise ValueError("this architecture has no layer with a width (Dense) to count its outputs")

    # --- the protocol ---------------------------------------------------------------------------------------
    def out_shape(self, in_shape: MultiShape) -> MultiShape:
        shape = in_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.out_shape(shape)
            except LayerError as error:
                raise LayerError(f"layers[{i}] {_name(layer)}: {error}") from None
        return shape

    def map_state(self, state: MultiState) -> MultiState:
        for i, layer in enumerate(self.layers):
            try:
                state = layer.map_state(state)
            except LayerError as error:
                raise LayerError(f"layers[{i}] {_name(layer)}: {error}") from None
        return state

    def requires_full(self, full_above: bool) -> bool:
        for layer in reversed(self.layers):
            full_above = layer.requires_full(full_above)
        return full_above

    def module(self, in_shape: MultiShape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        modules = []
        shape = in_shape
        for layer in self.layers:
            modules.append(layer.module(shape, generator, dtype))
            shape = layer.out_shape(shape)
        return nn.Sequential(*modules)


# ------------------------------------------------------------------------------------------------------------
# Branching
# ------------------------------------------------------------------------------------------------------------
class _FanOutModule(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,) * self.n

    def extra_repr(self) -> str:
        return str(self.n)


class FanOut(Layer):
    """Copies its input into `n` branches, to be processed by `Parallel` and merged by FanInSum/FanInConcat."""

    def __init__(self, n: int) -> None:
        self.n = check_int(n, "n", minimum=1)

    def __repr__(self) -> str:
        return f"FanOut({self.n})"

    def _config(self) -> tuple:
        return (self.n,)

    def out_shape(self, in_shape: MultiShape) -> MultiShape:
        if _is_multi(in_shape):
            raise LayerError("FanOut takes one input, but it receives branches: merge them first")
        return (in_shape,) * self.n

    def map_state(self, state: MultiState) -> MultiState:
        if isinstance(state, tuple):
            raise LayerError("FanOut takes one input, but it receives branches: merge them first")
        return (state, *(_clone(state) for _ in range(self.n - 1)))

    def module(self, in_shape: MultiShape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        return _FanOutModule(self.n)


class _ParallelModule(nn.Module):
    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(branch(x) for branch, x in zip(self.branches, xs, strict=True))


class Parallel(_Container):
    """Applies `branches[i]` to the i-th of its inputs (the branches made by `FanOut`)."""

    def __init__(self, *branches: Layer) -> None:
        branches = self._check_layers(branches, "branches")
        if not branches:
            raise ValueError("branches must not be empty")
        self.layers = branches

    def __repr__(self) -> str:
        inner = ",\n".join("    " + repr(layer).replace("\n", "\n    ") for layer in self.layers)
        return f"Parallel(\n{inner}\n)"

    def _split(self, items: tuple) -> tuple:
        if not isinstance(items, tuple) or not _is_multi_items(items) or len(items) != len(self.layers):
            got = len(items) if isinstance(items, tuple) and _is_multi_items(items) else 1
            raise LayerError(
                f"Parallel has {len(self.layers)} branches but receives {got} input(s): put FanOut("
                f"{len(self.layers)}) before it"
            )
        return items

    def out_shape(self, in_shape: MultiShape) -> MultiShape:
        shapes = self._split(in_shape)
        out = []
        for i, (layer, shape) in enumerate(zip(self.layers, shapes, strict=True)):
            try:
                out.append(layer.out_shape(shape))
            except LayerError as error:
                raise LayerError(f"branches[{i}] {_name(layer)}: {error}") from None
        return tuple(out)

    def map_state(self, state: MultiState) -> MultiState:
        states = self._split(state)
        out = []
        for i, (layer, s) in enumerate(zip(self.layers, states, strict=True)):
            try:
                out.append(layer.map_state(s))
            except LayerError as error:
                raise LayerError(f"branches[{i}] {_name(layer)}: {error}") from None
        return tuple(out)

    def requires_full(self, full_above: bool) -> bool:
        return any(layer.requires_full(full_above) for layer in self.layers)

    def module(self, in_shape: MultiShape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        shapes = self._split(in_shape)
        return _ParallelModule(
            [layer.module(s, generator, dtype) for layer, s in zip(self.layers, shapes, strict=True)]
        )


def _is_multi_items(items: tuple) -> bool:
    return len(items) > 0 and isinstance(items[0], (tuple, KernelState))


def _branches(kind: str, items: MultiShape | MultiState) -> tuple:
    if not isinstance(items, tuple) or not _is_multi_items(items):
        raise LayerError(
            f"{kind} merges branches, but it receives a single input: put FanOut and Parallel before it"
        )
    return items


def _sum(tensors: list[torch.Tensor | None], weights: list[float]) -> torch.Tensor | None:
    present = [(t, w) for t, w in zip(tensors, weights, strict=True) if t is not None]
    if not present:
        return None
    total = present[0][0].mul(present[0][1]) if present[0][1] != 1.0 else present[0][0].clone()
    for t, w in present[1:]:
        total.add_(t, alpha=w)
    return total


def _merge(states: tuple[KernelState, ...], weights: list[float], shape: Shape) -> KernelState:
    first = states[0]
    cov2 = None if first.cov2 is None else _sum([s.cov2 for s in states], weights)
    return first.replace(
        nngp=_sum([s.nngp for s in states], weights),
        ntk=_sum([s.ntk for s in states], weights),
        cov1=_sum([s.cov1 for s in states], weights),
        cov2=cov2,
        shape=shape,
        gaussian=all(s.gaussian for s in states),
    )


class _FanInSumModule(nn.Module):
    def forward(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total


class FanInSum(Layer):
    """Sums its branches (of one shape): the kernels add, as the branches are independent at infinite width."""

    def out_shape(self, in_shape: MultiShape) -> MultiShape:
        shapes = _branches("FanInSum", in_shape)
        if any(s != shapes[0] for s in shapes):
            raise LayerError(f"FanInSum needs branches of one shape, got {list(shapes)}")
        return shapes[0]

    def map_state(self, state: MultiState) -> MultiState:
        states = _branches("FanInSum", state)
        shape = self.out_shape(tuple(s.shape for s in states))
        return _merge(states, [1.0] * len(states), shape)

    def module(self, in_shape: MultiShape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        self.out_shape(in_shape)
        return _FanInSumModule()


class _FanInConcatModule(nn.Module):
    def forward(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class FanInConcat(Layer):
    """Concatenates its branches along features/channels (the other axes must agree).

    The kernels are the branches' averaged with weights C_i / sum C (their channel or feature counts): the next
    layer's 1 / fan-in sums over all concatenated units.
    """

    def out_shape(self, in_shape: MultiShape) -> MultiShape:
        shapes = _branches("FanInConcat", in_shape)
        if any(s[1:] != shapes[0][1:] for s in shapes):
            raise LayerError(
                f"FanInConcat needs branches whose shapes agree beyond the channels, got {list(shapes)}"
            )
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def map_state(self, state: MultiState) -> MultiState:
        states = _branches("FanInConcat", state)
        shape = self.out_shape(tuple(s.shape for s in states))
        return _merge(states, [s.shape[0] / shape[0] for s in states], shape)

    def module(self, in_shape: MultiShape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        self.out_shape(in_shape)
        return _FanInConcatModule()


class _ResidualModule(nn.Module):
    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Residual(_Container):
    """x + Serial(*layers)(x): a residual block (He et al. 2016). The branch must keep the input's shape."""

    def __init__(self, *layers: Layer) -> None:
        layers = self._check_layers(layers, "layers")
        if not layers:
            raise ValueError("layers must not be empty: Residual(*layers) adds Serial(*layers)(x) to x")
        self.layers = layers
        self._branch = Serial(*layers)

    def __repr__(self) -> str:
        return repr(self._branch).replace("Serial(", "Residual(", 1)

    def out_shape(self, in_shape: MultiShape) -> MultiShape:
        out = self._branch.out_shape(in_shape)
        if out != in_shape:
            raise LayerError(
                f"the residual branch maps the shape {in_shape} to {out}; it must keep the shape"
            )
        return out

    def map_state(self, state: MultiState) -> MultiState:
        if isinstance(state, tuple):
            raise LayerError("Residual takes one input, but it receives branches: merge them first")
        branch = self._branch.map_state(_clone(state))
        return _merge((state, branch), [1.0, 1.0], state.shape)

    def requires_full(self, full_above: bool) -> bool:
        return self._branch.requires_full(full_above)

    def module(self, in_shape: MultiShape, generator: torch.Generator, dtype: torch.dtype) -> nn.Module:
        self.out_shape(in_shape)
        return _ResidualModule(self._branch.module(in_shape, generator, dtype))


def mlp(
    depth: int,
    width: int,
    out: int = 1,
    activation: Layer | None = None,
    w_std: float = 1.0,
    b_std: float | None = 0.0,
    parametrization: str = "ntk",
) -> Serial:
    """A fully-connected network: `depth` hidden layers Dense(width) + activation, then Dense(out).

    `activation` defaults to ReLU(). Every Dense layer shares `w_std`, `b_std` and `parametrization`.
    """
    depth = check_int(depth, "depth", minimum=0)
    activation = ReLU() if activation is None else activation
    if not isinstance(activation, Activation):
        raise TypeError(
            f"activation must be an ntkit activation such as ReLU(), got {type(activation).__name__}"
        )
    layers: list[Layer] = []
    for _ in range(depth):
        layers += [Dense(width, w_std, b_std, parametrization), activation]
    layers.append(Dense(out, w_std, b_std, parametrization))
    return Serial(*layers)
