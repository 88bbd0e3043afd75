"""Architectures: a sequence of layer descriptions that yields both its infinite-width kernels and its network."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .. import tiling
from .._validation import as_float_tensor, check_choice, check_int, check_pair, check_real
from .activations import Activation, ReLU
from .dense import Dense
from .kernel import Kernel

Layer = Dense | Activation

# Live (a, b) temporaries of one block while the recursion runs: S, T, and the activation map's scratch.
_LIVE_BLOCKS = 6.0


class Serial:
    """An architecture: layers applied one after the other, described once for finite and infinite width.

    `Serial(Dense(512), ReLU(), Dense(1))` gives
    - `kernel(x1, x2)`: the exact NNGP K and NTK T of the infinitely wide network (Lee et al. 2018; Jacot et al.
      2018), by the recursion over layers in DESIGN.md, starting from the input covariance S0(x, x') = x.x' / d;
    - `build(d)`: the finite network with exactly the same parametrization, whose empirical NTK approaches T as
      the widths grow.

    The first layer must be `Dense` (activations act on Gaussian pre-activations).
    """

    def __init__(self, *layers: Layer) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("layers must not be empty: pass at least one Dense layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Dense, Activation)):
                raise TypeError(
                    f"layers[{i}] must be a Dense layer or an activation (e.g. ntkit.layers.ReLU()), "
                    f"got {type(layer).__name__}"
                )
        if not isinstance(layers[0], Dense):
            raise ValueError(
                f"layers[0] must be Dense (activations act on Gaussian pre-activations), got {layers[0]!r}"
            )
        self.layers: tuple[Layer, ...] = tuple(layers)

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        return f"Serial(\n{inner}\n)"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        if not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}; use arch.layers for slices")
        return self.layers[index]

    @property
    def out_features(self) -> int:
        """Number of outputs of the finite network: the width of the last Dense layer."""
        return next(layer.width for layer in reversed(self.layers) if isinstance(layer, Dense))

    # --- infinite width -------------------------------------------------------------------------------------
    def kernel(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        get: str | Sequence[str] = ("nngp", "ntk"),
        memory_budget: int | None = None,
        store: str | os.PathLike | None = None,
        progress: bool | None = None,
    ) -> Kernel:
        """The infinite-width NNGP and NTK between the rows of `x1` (n1, d) and `x2` (n2, d).

        Args:
            x1: inputs, a floating tensor or numpy array of shape (n1, d).
            x2: second inputs (n2, d); None computes K(x1, x1), using symmetry (only blocks on and above the
                diagonal are computed).
            get: "nngp", "ntk" or both; what is not requested is not computed (and is None in the result).
            memory_budget: bytes of working memory beside the output (default `tiling.DEFAULT_MEMORY_BUDGET`);
                the matrices are computed block by block, the whole depth recursion per block.
            store: a directory: write the matrices there as .npy files (memory-mapped, so they may exceed RAM),
                keeping finished blocks; calling again with the same directory resumes an interrupted run.
            progress: show a progress bar (None: only on a terminal).

        Returns:
            A `Kernel` whose matrices have shape (n1, n2) and x1's dtype and device (CPU tensors backed by the
            files when `store` is given).
        """
        x1 = as_float_tensor(x1, "x1")
        if x2 is not None:
            x2 = as_float_tensor(x2, "x2", like=x1)
            check_pair(x1, x2)
        names = _requested(get)
        budget = tiling.DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        budget = int(check_real(budget, "memory_budget", minimum=0.0, strict=True))
        symmetric = x2 is None
        xb = x1 if x2 is None else x2
        tile = tiling.tile_size(budget, x1.element_size(), _LIVE_BLOCKS * self._block_cost())
        diag1 = self._diagonals(x1)
        diag2 = diag1 if x2 is None else self._diagonals(xb)
        need_ntk = "ntk" in names
        d = x1.shape[1]

        def block(rows: slice, cols: slice, on_diagonal: bool) -> dict[str, torch.Tensor]:
            s, t = self._block(
                x1[rows],
                xb[cols],
                [v[rows] for v in diag1],
                [v[cols] for v in diag2],
                d,
                on_diagonal,
                need_ntk,
            )
            if need_ntk and t is None:  # nothing trainable: the NTK is zero
                t = torch.zeros_like(s)
            return {"nngp": s, "ntk": t}

        key = tiling.fingerprint(repr(self), x1, x2) if store is not None else ""
        out = tiling.run_blocks(
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
        return Kernel(nngp=out.get("nngp"), ntk=out.get("ntk"))

    def _block_cost(self) -> float:
        """Relative working memory per block entry of the most demanding layer (quadrature needs more)."""
        return max([1.0] + [getattr(layer, "block_cost", 1.0) for layer in self.layers])

    def _diagonals(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Variances S(x, x) before each layer and after the last: n_layers + 1 vectors of length n."""
        s = x.pow(2).sum(dim=1) / x.shape[1]
        out = [s]
        for layer in self.layers:
            s = layer._diag(s) if isinstance(layer, Dense) else layer.diag_map(s)
            out.append(s)
        return out

    def _block(
        self,
        xa: torch.Tensor,
        xb: torch.Tensor,
        diag_a: list[torch.Tensor],
        diag_b: list[torch.Tensor],
        d: int,
        on_diagonal: bool,
        need_ntk: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole depth recursion for one block of rows `xa` against columns `xb`."""
        s = torch.mm(xa, xb.T).div_(d)
        t: torch.Tensor | None = None
        width = d
        for index, layer in enumerate(self.layers):
            if on_diagonal:
                # Identical inputs must see exactly their own variance (theta = 0), not a rounded dot product.
                s.diagonal().copy_(diag_a[index])
            if isinstance(layer, Dense):
                s, t = layer._cross(s, t, width, need_ntk)
                width = layer.width
            else:
                s, dot = layer.kernel_map(
                    s, diag_a[index][:, None], diag_b[index][None, :], need_dot=need_ntk and t is not None
                )
                if t is not None and dot is not None:
                    t.mul_(dot)
        if on_diagonal:
            s.diagonal().copy_(diag_a[-1])
        return s, t

    # --- finite width ---------------------------------------------------------------------------------------
    def build(
        self,
        in_features: int,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> nn.Sequential:
        """The finite-width network of this description, a `torch.nn.Sequential` from (n, in_features) to (n, out).

        Parameters are drawn from a generator seeded with `seed` (fresh randomness when None) on the CPU and
        then moved to `device`, so one seed gives the same network on every device.
        """
        in_features = check_int(in_features, "in_features", minimum=1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(check_int(seed, "seed", minimum=0))
        modules: list[nn.Module] = []
        width = in_features
        for layer in self.layers:
            if isinstance(layer, Dense):
                modules.append(layer._module(width, generator, dtype))
                width = layer.width
            else:
                modules.append(layer.module())
        net = nn.Sequential(*modules)
        return net.to(device) if device is not None else net


def _requested(get: str | Iterable[str]) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise ValueError("get must name at least one of 'nngp', 'ntk'")
    for name in names:
        check_choice(name, "get", ("nngp", "ntk"))
    return tuple(dict.fromkeys(names))


def mlp(
    depth: int,
    width: int,
    out: int = 1,
    activation: Activation | None = None,
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
