"""Width studies: the power-law fit on exact power laws, and the concentration and freezing of finite NTKs."""

import math

import pytest
import torch

from ntkit.analysis import fit_power_law, kernel_drift, width_study
from ntkit.layers import ReLU, mlp


def test_fit_power_law_recovers_an_exact_power_law():
    widths = [16, 64, 256, 1024]
    slope, intercept = fit_power_law(widths, [3.0 * w**-0.5 for w in widths])
    assert slope == pytest.approx(-0.5, abs=1e-12)
    assert math.exp(intercept) == pytest.approx(3.0, rel=1e-12)


def test_fit_power_law_skips_values_without_a_logarithm():
    slope, _ = fit_power_law([1, 2, 4, 8], [1.0, 0.0, 0.25, float("nan")])
    assert slope == pytest.approx(-1.0, abs=1e-12)  # only (1, 1) and (4, 1/4) are usable
    assert math.isnan(fit_power_law([1, 2], [1.0, -1.0])[0])


def _arch(width):
    return mlp(1, width, activation=ReLU(), w_std=2**0.5, b_std=0.5)


def _inputs():
    return torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_width_study_error_shrinks_with_width():
    study = width_study(_arch, _inputs(), [8, 2048], seeds=4, progress=False)
    assert study.errors.shape == (2, 4) and study.errors.dtype == torch.float64
    assert study.seeds == [0, 1, 2, 3]
    # the relative error is O(width^-1/2): about 0.3 at width 8 and 0.02 at width 2048 (16x smaller); the
    # margins allow for the seed-to-seed spread of four draws
    assert float(study.mean[1]) < 0.05
    assert float(study.mean[0]) > 4 * float(study.mean[1])
    assert study.slope < -0.25
    # the reference is the analytic NTK of the architecture
    torch.testing.assert_close(study.reference, _arch(1).kernel(_inputs(), get="ntk").ntk)


def test_width_study_rejects_bad_arguments():
    with pytest.raises(TypeError, match="arch must be a function"):
        width_study(_arch(8), _inputs(), [8, 16])
    with pytest.raises(ValueError, match="widths must not be empty"):
        width_study(_arch, _inputs(), [])
    with pytest.raises(ValueError, match=r"widths\[1\] must be >= 1"):
        width_study(_arch, _inputs(), [8, 0])
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        width_study(_arch, _inputs(), [8, 16], seeds=0)


def _autograd_ntk(net, x):
    """K_ij = <d f(x_i) / d theta, d f(x_j) / d theta>, from a Jacobian built one output row at a time."""
    params = [p for p in net.parameters() if p.requires_grad]
    out = net(x).reshape(x.shape[0])
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[i], params, retain_graph=True)])
        for i in range(len(out))
    ]
    jacobian = torch.stack(rows)
    return jacobian @ jacobian.T


def _plain_gradient_descent(net, x, y, learning_rate, steps):
    """theta <- theta - eta grad L with L = 1/(2N) sum (f(x_i) - y_i)^2, N = n (the "mean" reduction)."""
    params = [p for p in net.parameters() if p.requires_grad]
    for _ in range(steps):
        loss = 0.5 * ((net(x).reshape(-1) - y) ** 2).sum() / y.numel()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= learning_rate * g


def test_kernel_drift_shrinks_with_width():
    x = _inputs()
    y = torch.sin(x.sum(dim=1))
    widths, seeds, rate, steps = [16, 2048], [0, 1], 0.5, 30
    drift = kernel_drift(_arch, x, y, widths, seeds=2, learning_rate=rate, steps=steps, progress=False)
    assert drift.drift.shape == (2, 2)
    # O(width^-1/2): an 11x smaller drift is predicted at 128x the width; asserting 4x leaves room for the
    # spread
    assert float(drift.mean[1]) < float(drift.mean[0]) / 4
    assert drift.runs[1][0].t.tolist() == [
        0,
        30,
    ]  # by default the NTK is recorded at the start and the end only
    # Each entry against the docstring's definition, ||T(theta_end) - T(theta_0)||_F / ||T(theta_0)||_F, on the
    # same network (arch(m).build(d, seed=s)) trained by a plain gradient-descent loop written here, with both
    # kernels from a row-by-row autograd Jacobian. Both routes do the same float64 arithmetic up to summation
    # order (~1e-16 per step), which 30 stable steps (eta well below 2 N / lambda_max) do not amplify beyond
    # ~1e-13 in the parameters; the drift (>= 1e-3) is then good to ~1e-10 relative: rtol 1e-8.
    for i, width in enumerate(widths):
        for j, seed in enumerate(seeds):
            net = _arch(width).build(x.shape[1], seed=seed, dtype=torch.float64)
            start = _autograd_ntk(net, x)
            _plain_gradient_descent(net, x, y, rate, steps)
            end = _autograd_ntk(net, x)
            expected = float(torch.linalg.matrix_norm(end - start) / torch.linalg.matrix_norm(start))
            assert float(drift.drift[i, j]) == pytest.approx(expected, rel=1e-8)
