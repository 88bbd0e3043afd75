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


def test_kernel_drift_shrinks_with_width():
    x = _inputs()
    y = torch.sin(x.sum(dim=1))
    drift = kernel_drift(_arch, x, y, [16, 2048], seeds=2, learning_rate=0.5, steps=30, progress=False)
    assert drift.drift.shape == (2, 2)
    # O(width^-1/2): an 11x smaller drift is predicted at 128x the width; asserting 4x leaves room for the
    # spread
    assert float(drift.mean[1]) < float(drift.mean[0]) / 4
    run = drift.runs[1][0]
    assert run.t.tolist() == [0, 30]  # by default the NTK is recorded at the start and the end only
    torch.testing.assert_close(run.ntk_drift[-1].double(), drift.drift[1, 0], rtol=1e-12, atol=0)
