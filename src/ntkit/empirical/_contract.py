"""Contractions of per-example gradient blocks into NTK blocks, for the three `outputs` modes.

A block of per-example gradients J has shape (b, k, M): example, output, flattened parameter. The NTK block is
T_ab(i, j) = <J1[i, a], J2[j, b]>. For "mean" the functions below return the *sum* over a of T_aa (the caller
divides by k once, after adding every part), which is a single matrix product of the (b, k*M) reshapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.T


_SYMMETRIC_MIN = 256  # below this many examples one block is as fast as the panels


def mirror(block: torch.Tensor) -> torch.Tensor:
    """T(x2, x1) from T(x1, x2): swap the example axes and, for "full", also the output axes."""
    if block.ndim == 4:
        return block.permute(1, 0, 3, 2)
    if block.ndim == 3:
        return block.permute(1, 0, 2)
    return block.T


def symmetric(contract: Callable[[slice, slice], torch.Tensor], n: int) -> torch.Tensor:
    """T(X, X) of n examples from row panels contracted against the columns from the panel on, then mirrored.

    `contract(rows, cols)` returns the block T(X[rows], X[cols]). Panels of c rows cost n**2 / 2 + n c / 2
    pair contractions instead of n**2. The squares on the diagonal are symmetrised, so the result is exactly
    symmetric.
    """
    if n < _SYMMETRIC_MIN:
        block = contract(slice(0, n), slice(0, n))
        return (block + mirror(block)) / 2
    panel = max(128, n // 8)
    out: torch.Tensor | None = None
    for i in range(0, n, panel):
        block = contract(slice(i, i + panel), slice(i, n))
        if out is None:
            out = block.new_empty((n, n, *block.shape[2:]))
        rows = block.shape[0]
        square = block[:, :rows]
        square.copy_((square + mirror(square)) / 2)
        out[i : i + rows, i:] = block
        out[i + rows :, i : i + rows] = mirror(block[:, rows:])
    return out


def dense(j1: torch.Tensor, j2: torch.Tensor, mode: str) -> torch.Tensor:
    """NTK block of two dense per-example gradient blocks (b1, k, M) and (b2, k, M)."""
    b1, k, m = j1.shape
    b2 = j2.shape[0]
    if mode == "mean":
        return _gram(j1.reshape(b1, k * m), j2.reshape(b2, k * m))
    if mode == "diagonal":
        return torch.bmm(j1.transpose(0, 1), j2.permute(1, 2, 0)).permute(1, 2, 0)
    return _gram(j1.reshape(b1 * k, m), j2.reshape(b2 * k, m)).view(b1, k, b2, k).permute(0, 2, 1, 3)


def factored(g1: torch.Tensor, a_gram: torch.Tensor, g2: torch.Tensor, mode: str) -> torch.Tensor:
    """NTK block of a parameter whose per-example gradient is sum_s g[i, a, s] (outer) u[i, s].

    g1, g2: output-side factors (b, k, S, dg); a_gram: the Gram matrix of the other factor,
    <u1[i, s], u2[j, t]>, of shape (b1, S, b2, S). The contribution is
    T_ab(i, j) = sum_{s, t} <u1[i, s], u2[j, t]> <g1[i, a, s], g2[j, b, t]>  (two small Gram products instead
    of a contraction over the dg x du parameter matrix; Novak et al. 2022, "structured derivatives").
    """
    b1, k, s1, dg = g1.shape
    b2, _, s2, _ = g2.shape
    if s1 == 1 and s2 == 1:
        a2 = a_gram.reshape(b1, b2)
        if mode == "mean":
            return a2 * _gram(g1.reshape(b1, k * dg), g2.reshape(b2, k * dg))
        if mode == "diagonal":
            gg = torch.bmm(g1.reshape(b1, k, dg).transpose(0, 1), g2.reshape(b2, k, dg).permute(1, 2, 0))
            return a2.unsqueeze(-1) * gg.permute(1, 2, 0)
        gg = _gram(g1.reshape(b1 * k, dg), g2.reshape(b2 * k, dg)).view(b1, k, b2, k).permute(0, 2, 1, 3)
        return a2[:, :, None, None] * gg
    if mode == "mean":
        left = g1.permute(0, 2, 1, 3).reshape(b1 * s1, k * dg)
        right = g2.permute(0, 2, 1, 3).reshape(b2 * s2, k * dg)
        gg = _gram(left, right).view(b1, s1, b2, s2)
        return (gg * a_gram).sum(dim=(1, 3))
    if mode == "diagonal":
        left = g1.permute(1, 0, 2, 3).reshape(k, b1 * s1, dg)
        right = g2.permute(1, 3, 0, 2).reshape(k, dg, b2 * s2)
        gg = torch.bmm(left, right).view(k, b1, s1, b2, s2)
        return torch.einsum("isjt,aisjt->ija", a_gram, gg)
    gg = _gram(g1.reshape(b1 * k * s1, dg), g2.reshape(b2 * k * s2, dg)).view(b1, k, s1, b2, k, s2)
    return torch.einsum("isjt,iasjbt->ijab", a_gram, gg)
