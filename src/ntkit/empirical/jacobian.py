"""Empirical NTK by Jacobian contraction: per-example Jacobians from torch.func, then inner products.

T_ab(x, x') = sum_p J_a(x)_p J_b(x')_p with J(x) = df(x)/dtheta (Jacot et al. 2018). The per-example Jacobians
of a block of examples come from `vmap(jacrev(f))` over the examples (one reverse pass per output, batched
over the examples), are flattened and concatenated over parameters into a (b, k, P) block, and each pair of
blocks is one matrix product. This is Novak et al. (2022)'s "Jacobian contraction"; its cost is O(n k P)
memory per block and O(n1 n2 k P) (k**2 for outputs="full") multiply-adds, so it suits small models and is the
exact reference the faster methods are checked against.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ..tiling import warn_if_one_example_exceeds
from . import _contract
from ._batching import OUT_OF_MEMORY, block_size, run_blocks
from ._problem import Problem


def _single_output(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f(x) for one example (no batch axis) as a flat vector of its k outputs."""
    return functional_call(model, params, (x.unsqueeze(0),)).reshape(-1)


def per_example_jacobians(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, *, flat: bool = True
) -> torch.Tensor | list[torch.Tensor]:
    """The Jacobians of the model's outputs with respect to `params` for every example of x.

    Returns a (b, k, P) tensor, the parameters flattened and concatenated in the order of `params`, or with
    flat=False the list of per-parameter (b, k, P_i) blocks (which saves a copy of the largest array). Models
    whose forward pass cannot be vmapped (data-dependent control flow, .item()) are differentiated one example
    at a time instead.
    """
    b = x.shape[0]

    def single(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return _single_output(model, p, xi)

    try:
        jac = vmap(jacrev(single), in_dims=(None, 0))(params, x)
    except OUT_OF_MEMORY:  # a RuntimeError, but no reason to fall back to a slow loop: report it
        raise
    except (RuntimeError, ValueError, NotImplementedError):
        rows = [jacrev(single)(params, x[i]) for i in range(b)]
        jac = {name: torch.stack([row[name] for row in rows]) for name in params}
    blocks = [jac[name].reshape(b, jac[name].shape[1], -1) for name in params]
    return torch.cat(blocks, dim=2) if flat else blocks


def jacobian_ntk(problem: Problem, x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
    """Empirical NTK of `problem` by Jacobian contraction (see the module docstring)."""
    model, params, mode, k = problem.model, problem.params, problem.mode, problem.k
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    per_example = 1.5 * k * problem.n_params * problem.itemsize  # the Jacobians and vmap's transients
    cache = n2 * per_example <= problem.budget / 2
    if problem.batch_size is not None:
        rows = cols = problem.batch_size
    elif cache:
        rows = cols = block_size(
            max(n1, n2), per_example, problem.k_pairs * problem.itemsize, budget=problem.budget
        )
    else:
        # Column features are recomputed for every row panel, so the panel is 3x the column block: 4 c
        # examples' features, and the largest block of pairs is the panel's diagonal one, (3 c)**2 pairs.
        pair = problem.k_pairs * problem.itemsize
        warn_if_one_example_exceeds(problem.budget, per_example, pair)
        c = (-4 * per_example + math.sqrt(16 * per_example**2 + 36 * pair * problem.budget)) / (18 * pair)
        rows, cols = min(n1, max(1, int(3 * c))), min(n2, max(1, int(c)))

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        return per_example_jacobians(model, params, x, flat=False)

    def pairs(j1: list[torch.Tensor], j2: list[torch.Tensor]) -> torch.Tensor:
        block = _contract.dense(j1[0], j2[0], mode)
        for a, b in zip(j1[1:], j2[1:], strict=True):
            block += _contract.dense(a, b, mode)
        return block / k if mode == "mean" else block

    def contract(j1: list[torch.Tensor], j2: list[torch.Tensor], on_diagonal: bool) -> torch.Tensor:
        if on_diagonal:
            return _contract.symmetric(
                lambda r, c: pairs([j[r] for j in j1], [j[c] for j in j1]), j1[0].shape[0]
            )
        return pairs(j1, j2)

    return run_blocks(
        x1,
        x2,
        row_features=features,
        col_features=features,
        contract=contract,
        tail=problem.tail,
        dtype=problem.dtype,
        device=problem.device,
        batch=rows,
        col_batch=cols,
        cache_columns=cache,
        shared_features=True,
        progress=problem.progress,
        description="empirical NTK (jacobian)",
    )


def cost(problem: Problem, forward: float, examples: float, pairs: float) -> float:
    """Estimated flops: a backward pass per output per example (3 F k n), then the contraction of P-long
    Jacobians for every pair of examples and formed output pair (2 P kp p)."""
    return 3.0 * forward * problem.k * examples + 2.0 * problem.n_params * problem.k_pairs * pairs
