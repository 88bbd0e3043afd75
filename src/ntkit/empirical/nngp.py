"""The empirical NNGP of a model: the output covariance that one network at initialisation estimates.

For a network whose k output units are identically distributed at initialisation (a readout layer of
independent weights), K(x, x') = E[f_a(x) f_a(x')] is the NNGP, and one network gives the estimate

    K_hat(x, x') = (1 / k) sum_a f_a(x) f_a(x')

(neural-tangents' `empirical_nngp_fn` with the outputs traced; Lee et al. 2018). Averaged over initialisations
it is unbiased; one draw has a relative spread of order k^-1/2, and the dependence among outputs that a finite
width leaves adds an O(1/width) bias. `outputs="diagonal"` keeps every a (f_a(x) f_a(x')), "full" every pair
(f_a(x) f_b(x')), as for `empirical_ntk`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._validation import check_choice, check_int
from . import _checks
from ._problem import OUTPUTS, as_inputs


def empirical_nngp(
    model: nn.Module,
    x1: torch.Tensor | np.ndarray,
    x2: torch.Tensor | np.ndarray | None = None,
    *,
    outputs: str = "mean",
    batch_size: int | None = None,
) -> torch.Tensor:
    """The output covariance (1/k) sum_a f_a(x) f_a(x') of `model` between the examples of x1 and x2.

    Args:
        model: a `torch.nn.Module` mapping a batch (n, ...) to outputs (n, ...) (flattened to k per example),
            with examples independent of each other (checked as for `empirical_ntk`).
        x1, x2: inputs (n1, ...) and (n2, ...) (x2 None: x1); floating inputs are cast to the model's dtype.
        outputs: "mean" -> (n1, n2); "diagonal" -> (n1, n2, k), f_a(x) f_a(x'); "full" -> (n1, n2, k, k).
        batch_size: examples per forward pass (default: all at once).

    Returns:
        A tensor in the model's dtype on its device.

    Example:
        >>> net = ntkit.mlp(2, 512, out=64).build(3, seed=0, dtype=torch.float64)
        >>> k_hat = empirical_nngp(net, torch.randn(10, 3, dtype=torch.float64))  # ~ mlp(2, 512).kernel(x).nngp
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice(outputs, "outputs", OUTPUTS)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    tensors = [*model.parameters(), *model.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    dtype = floating[0].dtype if floating else torch.get_default_dtype()
    device = tensors[0].device if tensors else torch.device("cpu")
    x1, x2 = as_inputs(x1, x2, dtype, device)
    _checks.check_modes(model)
    _checks.probe(model, _checks.spread_rows(x1, x2, _checks.PROBE_BATCH), "x1" if x2 is None else "x1/x2")
    f1 = _outputs(model, x1, batch_size)
    f2 = f1 if x2 is None else _outputs(model, x2, batch_size)
    if outputs == "mean":
        gram = (f1 @ f2.T) / f1.shape[1]
        # BLAS need not round f1 f1^T symmetrically; K(X, X) must be exactly symmetric.
        return gram if x2 is not None else gram.triu() + gram.triu(1).T
    if outputs == "diagonal":
        return torch.einsum("ia,ja->ija", f1, f2)
    return torch.einsum("ia,jb->ijab", f1, f2)


def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    step = batch_size or x.shape[0]
    with torch.no_grad():
        parts = [
            model(x[i : i + step]).reshape(min(step, x.shape[0] - i), -1) for i in range(0, x.shape[0], step)
        ]
    return torch.cat(parts)
