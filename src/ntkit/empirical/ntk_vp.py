"""Empirical NTK by NTK-vector products: a vjp on the column example, then a jvp through the row examples.

Theta(X1, X2) v = J(X1) (J(X2)^T v) (Novak et al. 2022, "Fast finite width neural tangent kernel"):
the vjp turns a cotangent v on the outputs for x2 into a parameter-space vector, and a jvp pushes that vector
through the network at x1, so J(X1) is never materialised. Taking v through the basis vectors e_(j, b) gives
the column T_.b(X1, x2_j). Since examples are independent, the vjp of e_(j, b) is the vjp of output b of the
single example x2_j, so the vjps are per example (vmapped) rather than through the whole batch. The jvps are
vmapped over the b2 * k tangents of a column block, in chunks that keep memory within the budget. Cost: n1 n2 k
forward-mode passes of one example each, and no contraction over the P parameters; it can pay off over
Jacobian contraction for many outputs with outputs="full" when a forward pass costs less than k P.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from . import _checks, _contract
from ._batching import OUT_OF_MEMORY, block_size, run_blocks
from ._problem import Problem
from .jacobian import per_example_jacobians


def _push_forward(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    tangents: dict[str, torch.Tensor],
    chunk: int,
) -> torch.Tensor:
    """J(x) t for every tangent t (leading axis of `tangents`): shape (t, b, k)."""

    def one(tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        _, out = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tangent,))
        return out.reshape(x.shape[0], -1)

    try:
        return vmap(one, chunk_size=chunk)(tangents)
    except OUT_OF_MEMORY:  # a RuntimeError, but no reason to fall back to a slow loop: report it
        raise
    except (RuntimeError, ValueError, NotImplementedError):  # a forward pass vmap cannot batch: one at a time
        count = next(iter(tangents.values())).shape[0]
        try:
            return torch.stack([one({name: t[i] for name, t in tangents.items()}) for i in range(count)])
        except OUT_OF_MEMORY:
            raise
        except (RuntimeError, NotImplementedError) as err:
            raise ValueError(
                "method='ntk-vp' needs forward-mode differentiation (jvp) through the model, which one of "
                f"its operations lacks ({err}); use method='layerwise' or 'jacobian'"
            ) from err


def supports_forward_ad(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> bool:
    """Whether a jvp through the model runs on the example batch x (some fused kernels have no forward AD)."""
    try:
        jvp(lambda p: functional_call(model, p, (x,)), (params,), (params,))
    except OUT_OF_MEMORY:
        raise
    except (RuntimeError, NotImplementedError):
        return False
    return True


def ntk_vp_ntk(problem: Problem, x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
    """Empirical NTK of `problem` by NTK-vector products (see the module docstring)."""
    model, params, mode, k = problem.model, problem.params, problem.mode, problem.k
    if not supports_forward_ad(model, params, x1[:1]):
        raise ValueError(
            "method='ntk-vp' needs forward-mode differentiation (jvp) through the model, which one of its "
            "operations lacks; use method='layerwise' or 'jacobian'"
        )
    names = list(params)
    shapes = [params[name].shape for name in names]
    sizes = [params[name].numel() for name in names]
    per_example = k * problem.n_params * problem.itemsize
    n = max(x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0])
    batch = problem.batch_size or block_size(
        n, 1.5 * per_example, problem.k_pairs * problem.itemsize, budget=problem.budget
    )
    _checks.check_batched(model, x1, x2, batch)  # the jvps run the model on blocks of rows
    # each vmapped jvp carries a parameter-sized tangent and its dual numbers through the network
    chunk = max(1, int(problem.budget / (8 * problem.n_params * problem.itemsize)))

    def column_tangents(x: torch.Tensor) -> dict[str, torch.Tensor]:
        """J(x2_j)^T e_b for every example j and output b of a column block, as tangents (b2 * k, *shape)."""
        # (b2, k, P): the per-example vjps of the basis vectors
        rows = per_example_jacobians(model, params, x)
        flat = rows.reshape(-1, rows.shape[-1])
        return {
            name: part.reshape(-1, *shape)
            for name, part, shape in zip(names, flat.split(sizes, dim=1), shapes, strict=True)
        }

    def pairs(xr: torch.Tensor, tangents: dict[str, torch.Tensor]) -> torch.Tensor:
        # (b2 * k, b1, k): T_ab(x1_i, x2_j) at [j * k + b, i, a]
        pushed = _push_forward(model, params, xr, tangents, chunk)
        b1 = xr.shape[0]
        block = pushed.reshape(-1, k, b1, k).permute(2, 0, 3, 1)  # (b1, b2, a, b)
        if mode == "full":
            return block
        diagonal = block.diagonal(dim1=2, dim2=3)
        return diagonal.mean(-1) if mode == "mean" else diagonal

    def contract(xr: torch.Tensor, tangents: dict[str, torch.Tensor], on_diagonal: bool) -> torch.Tensor:
        if not on_diagonal:
            return pairs(xr, tangents)
        n = xr.shape[0]

        def panel(rows: slice, cols: slice) -> torch.Tensor:
            first, last, _ = cols.indices(n)  # the tangents of example j are rows j * k ... j * k + k - 1
            return pairs(xr[rows], {name: t[first * k : last * k] for name, t in tangents.items()})

        # the square on the diagonal of K(X, X): panels on and above it, mirrored, so exactly symmetric
        return _contract.symmetric(panel, n)

    return run_blocks(
        x1,
        x2,
        row_features=lambda x: x,
        col_features=column_tangents,
        contract=contract,
        tail=problem.tail,
        dtype=problem.dtype,
        device=problem.device,
        batch=batch,
        cache_columns=(x1 if x2 is None else x2).shape[0] * per_example <= problem.budget / 2,
        shared_features=False,
        progress=problem.progress,
        description="empirical NTK (ntk-vp)",
    )


def cost(problem: Problem, forward: float, examples: float, pairs: float) -> float:
    """Estimated flops: a vjp per output per example (3 F k n), then a jvp per tangent per pair (3 F k p)."""
    return 3.0 * forward * problem.k * examples + 3.0 * forward * problem.k * pairs
