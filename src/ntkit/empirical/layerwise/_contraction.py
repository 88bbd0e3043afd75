"""The layerwise features of a block (the plan's representation of every parameter) and their contraction."""

from __future__ import annotations

from typing import Any

import torch

from .. import _contract
from ._hooks import LayerwiseUnsupported
from ._plan import _Group, _Plan


class Contraction:
    """The engine's contraction job: assemble a block's features, and contract two blocks' features."""

    def _assemble(self, uses: list, plan: _Plan, b: int) -> dict[str, Any]:
        """Gather the uses of a block into the plan's representation."""
        by_key: dict[str, list] = {}
        for use in uses:
            by_key.setdefault(use[1], []).append(use)
        factors, onehots, dense = [], [], []
        for group in plan.groups:
            for key in group.keys:
                if tuple(u[0] for u in by_key.get(key, [])) != group.calls:
                    raise LayerwiseUnsupported(
                        f"parameter {key!r} was used differently in this block than on the probe examples "
                        "(does the forward pass branch on the data?); use method='jacobian'"
                    )
            if group.kind == "factored":
                g_parts, u_parts = [], []
                # the keys of a group share their calls, so the g factor of a call is the same for all of them
                for position in range(len(group.calls)):
                    g_parts.append(by_key[group.keys[0]][position][3])
                    u_parts.append(torch.cat([by_key[key][position][4] for key in group.keys], dim=-1))
                factors.append((torch.cat(g_parts, dim=2), torch.cat(u_parts, dim=1)))
            elif group.kind == "onehot":
                key_uses = by_key[group.keys[0]]
                onehots.append(
                    (torch.cat([u[3] for u in key_uses], dim=2), torch.cat([u[4] for u in key_uses], dim=1))
                )
            else:
                for key in group.keys:
                    dense.append(self._materialise(by_key[key], self.problem.params[key]))
        return {"factors": factors, "onehots": onehots, "dense": dense, "n": b}

    def _materialise(self, key_uses: list, param: torch.Tensor) -> torch.Tensor:
        """Per-example gradient (b, k, M) of one parameter: the sum of its uses."""
        total = None
        for use in key_uses:
            kind = use[2]
            if kind == "dense":
                part = use[3]
            elif kind == "factor":
                g, u = use[3], use[4]
                part = torch.einsum("bksg,bsu->bkgu", g, u).reshape(g.shape[0], g.shape[1], -1)
            else:
                g, idx = use[3], use[4]
                b, k, s, d = g.shape
                rows = param.shape[0]
                buf = torch.zeros(b, rows, k * d, dtype=g.dtype, device=g.device)
                buf.scatter_add_(
                    1, idx.unsqueeze(-1).expand(b, s, k * d), g.permute(0, 2, 1, 3).reshape(b, s, k * d)
                )
                part = buf.view(b, rows, k, d).permute(0, 2, 1, 3).reshape(b, k, -1)
            total = part if total is None else total + part
        return total

    def _weighted_sums(
        self, feats: dict[str, Any], groups: list[_Group], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """sum_i sum_a w_ia grad_ia for every grouped parameter, from the assembled features."""
        out: dict[str, torch.Tensor] = {}
        factors, onehots, dense = iter(feats["factors"]), iter(feats["onehots"]), iter(feats["dense"])
        for group in groups:
            if group.kind == "factored":
                g, u = next(factors)
                b, _, s, dg = g.shape
                weighted = (g * weights[:, :, None, None]).sum(1).reshape(b * s, dg)
                total = weighted.T @ u.reshape(b * s, -1)
                offset = 0
                for key in group.keys:
                    width = self.problem.params[key].numel() // dg
                    out[key] = total[:, offset : offset + width]
                    offset += width
            elif group.kind == "onehot":
                g, idx = next(onehots)
                p = self.problem.params[group.keys[0]]
                weighted = (g * weights[:, :, None, None]).sum(1).reshape(-1, p.shape[1])
                out[group.keys[0]] = torch.zeros_like(p).index_add_(0, idx.reshape(-1), weighted)
            else:
                for key in group.keys:
                    j = next(dense)
                    out[key] = (j * weights[:, :, None]).sum(dim=(0, 1))
        return out

    def contract(self, f1: dict[str, Any], f2: dict[str, Any], on_diagonal: bool) -> torch.Tensor:
        """T(block 1, block 2); on the diagonal of K(X, X), by panels on and above the diagonal only."""
        if on_diagonal:
            return _contract.symmetric(lambda r, c: self._contract(_rows(f1, r), _rows(f1, c)), f1["n"])
        return self._contract(f1, f2)

    def _contract(self, f1: dict[str, Any], f2: dict[str, Any]) -> torch.Tensor:
        mode, k = self.problem.mode, self.problem.k
        total = None
        for (g1, u1), (g2, u2) in zip(f1["factors"], f2["factors"], strict=True):
            b1, s1, b2, s2 = u1.shape[0], u1.shape[1], u2.shape[0], u2.shape[1]
            u_gram = (u1.reshape(b1 * s1, -1) @ u2.reshape(b2 * s2, -1).T).view(b1, s1, b2, s2)
            part = _contract.factored(g1, u_gram, g2, mode)
            total = part if total is None else total.add_(part)
        for (g1, i1), (g2, i2) in zip(f1["onehots"], f2["onehots"], strict=True):
            b1, s1, b2, s2 = i1.shape[0], i1.shape[1], i2.shape[0], i2.shape[1]
            same = (i1.reshape(-1, 1) == i2.reshape(1, -1)).to(g1.dtype).view(b1, s1, b2, s2)
            part = _contract.factored(g1, same, g2, mode)
            total = part if total is None else total.add_(part)
        if f1["dense"] is not None:
            part = _contract.dense(f1["dense"], f2["dense"], mode)
            total = part if total is None else total.add_(part)
        if total is None:  # no selected parameter influences the output
            shape = (f1["n"], f2["n"], *self.problem.tail)
            total = torch.zeros(shape, dtype=self.problem.dtype, device=self.problem.device)
        return total / k if mode == "mean" else total


def _rows(feats: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The features of examples `rows` of a block."""
    return {
        "factors": [(g[rows], u[rows]) for g, u in feats["factors"]],
        "onehots": [(g[rows], idx[rows]) for g, idx in feats["onehots"]],
        "dense": None if feats["dense"] is None else feats["dense"][rows],
        "n": len(range(feats["n"])[rows]),
    }
