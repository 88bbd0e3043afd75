"""The test-point inputs that every predictor of ntkit.dynamics takes alike: k_test_train and fx_test_0."""

from __future__ import annotations

import torch

from .._validation import Array, Outputs, check_cross_kernel, check_outputs


def check_test_inputs(
    k_test_train: Array | None,
    fx_test_0: Outputs | None,
    n: int,
    outputs: int,
    was_1d: bool,
    like: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The test-train kernel (m, n) and the test points' initial outputs (zero when not given), or (None, None)."""
    if k_test_train is None:
        if fx_test_0 is not None:
            raise ValueError("fx_test_0 was given without k_test_train: pass the test-train NTK as well")
        return None, None
    cross = check_cross_kernel(k_test_train, n, "k_test_train", like)
    m = cross.shape[0]
    if fx_test_0 is None:
        return cross, torch.zeros((m, outputs), dtype=like.dtype, device=like.device)
    return cross, check_outputs(fx_test_0, m, outputs, was_1d, "fx_test_0", like)
