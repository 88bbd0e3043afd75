"""Single report sections run directly on a tiny configuration, checking how they compute."""

import pytest
import torch

from ntkit.layers import Serial
from ntkit.predict import max_learning_rate
from ntkit.report._context import AUTO_STEP, Context
from ntkit.report.config import resolve_config
from ntkit.report.sections import module


def test_digits_kernels_and_regression_run_in_float64(tmp_path):
    """docs/report.md: kernels are decomposed in float64 whatever the network's dtype (here float32)."""
    config = resolve_config(
        {
            "dtype": "float32",
            "sections": ["digits"],
            "digits": {"n_train": 40, "n_test": 30, "width": 64, "steps": 4},
        }
    )
    ctx = Context(config, progress=False)
    seen = []
    real_kernel = Serial.kernel

    def recording_kernel(self, x1, x2=None, *args, **kwargs):
        seen.append((x1.dtype, None if x2 is None else x2.dtype))
        out = real_kernel(self, x1, x2, *args, **kwargs)
        seen.append((out.ntk.dtype, None))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Serial, "kernel", recording_kernel)
        result = module("digits").run(ctx, tmp_path)
    assert seen and all(dtype == torch.float64 and other in (None, torch.float64) for dtype, other in seen)
    # the "auto" rate is AUTO_STEP / lambda_max * N, from the float64 kernel
    kernel = (
        ctx.arch(width=64, outputs=10, depth=config["digits"]["depth"])
        .kernel(_digits_x_train(ctx, config).double(), get="ntk")
        .ntk
    )
    expected = AUTO_STEP / 2 * max_learning_rate(kernel, y_train_size=40 * 10)
    assert result.metrics["learning_rate"] == pytest.approx(expected, rel=1e-12)
    assert result.metrics["test_outputs_closed_form_final"].dtype == torch.float32  # the network's dtype


def _digits_x_train(ctx, config):
    from ntkit.report.data import load_digits_split

    settings = config["digits"]
    return load_digits_split(settings["n_train"], settings["n_test"], ctx.seed, ctx.device, ctx.dtype).x_train


def test_auto_learning_rate_is_auto_step_on_the_analytic_ntk():
    ctx = Context(resolve_config(None, quick=True), progress=False)
    lam_max = float(torch.linalg.eigvalsh(ctx.kernel_train.double())[-1])
    assert ctx.learning_rate == pytest.approx(AUTO_STEP * ctx.data.y_train.numel() / lam_max, rel=1e-12)


def test_conv_section_kernels_in_float64_and_rate_from_the_cntk(tmp_path):
    """The conv section: float64 kernels for a float32 CNN, the "auto" rate from the CNTK-GAP, its checks."""
    from ntkit.layers import GlobalAvgPool
    from ntkit.report.data import load_digits_split
    from ntkit.report.sections import conv

    config = resolve_config(
        {
            "dtype": "float32",
            "sections": ["conv"],
            "conv": {"n_train": 20, "n_test": 15, "channels": 8, "steps": 4},
        }
    )
    ctx = Context(config, progress=False)
    seen = []
    real_kernel = Serial.kernel

    def recording_kernel(self, x1, x2=None, *args, **kwargs):
        seen.append((x1.dim(), x1.dtype, None if x2 is None else x2.dtype))
        return real_kernel(self, x1, x2, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Serial, "kernel", recording_kernel)
        result = module("conv").run(ctx, tmp_path)
    assert (tmp_path / "conv.png").stat().st_size > 10_000 and (tmp_path / "conv.svg").is_file()
    assert all(dtype == torch.float64 and other in (None, torch.float64) for _, dtype, other in seen)
    assert sorted({rank for rank, _, _ in seen}) == [2, 4]  # the FC NTK on pixels, the conv kernels on images
    pixels = load_digits_split(20, 15, ctx.seed, ctx.device, ctx.dtype).x_train  # in the network's dtype
    images = pixels.double().reshape(-1, 1, 8, 8)
    cntk = conv._cnn(ctx, 8, config["conv"]["depth"], GlobalAvgPool()).kernel(images, get=("nngp", "ntk")).ntk
    expected = AUTO_STEP / 2 * max_learning_rate(cntk, y_train_size=20 * 10)
    metrics = result.metrics
    assert metrics["learning_rate"] == pytest.approx(expected, rel=1e-12)
    assert metrics["test_outputs_network_final"].dtype == torch.float32
    assert set(metrics["test_accuracy_kernel_regression"]) == {
        "FC NTK",
        "CNN-GP (Flatten)",
        "CNN-GP (GAP)",
        "CNTK-GAP",
    }
    assert len(metrics["test_accuracy_network"]) == len(metrics["steps"]) == 5  # steps 0..4, every step
    agreement, accuracy = result.checks
    assert agreement.passed == (metrics["agreement_network_closed_form"] > conv.AGREEMENT)
    kernel_accuracy = metrics["test_accuracy_kernel_regression"]
    assert accuracy.passed == (
        min(kernel_accuracy["CNTK-GAP"], kernel_accuracy["CNN-GP (Flatten)"]) > conv.ACCURACY
    )
