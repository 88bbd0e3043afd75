"""What the report page shows: the summary's thresholds and points of judgement, notes, test error with the
user's test points, and figures drawn so that they can be read (shared colour scales, axes, legends, ticks)."""

import json

import numpy as np
import pytest
import torch

from ntkit.report import generate_report
from ntkit.report._base import Check, SectionResult
from ntkit.report._context import Context
from ntkit.report._html import render_html
from ntkit.report.config import resolve_config
from ntkit.report.sections import module


def _page(tmp_path, checks, **section):
    from ntkit._artifacts import new_figure, save_figure

    figure, _ = new_figure(1, 1)
    save_figure(figure, tmp_path, "demo")
    result = SectionResult("demo", "1. Demo", "caption", {}, checks, **section)
    return render_html(
        title="t", meta=[], sections=[result], figures=tmp_path, config_toml="", reused=["demo"]
    )


def test_summary_gives_threshold_point_and_a_late_failure(tmp_path):
    checks = [
        Check(
            "early", "follows", "0.05 at step 96", True, "gap < 0.1", "step 96 of 400", "no after 400 steps"
        ),
        Check("plain", "holds", "fine", True, "x > 1", "initialisation"),
        Check("broken", "fails", "bad", False, "y < 2", "after 400 steps"),
    ]
    page = _page(tmp_path, checks, notes=["This section uses built-in data."])
    assert "<th>held if</th><th>judged at</th>" in page
    assert "<td>gap &lt; 0.1</td><td>step 96 of 400</td>" in page
    assert '<td class="verdict partial">yes, then no after 400 steps</td>' in page
    assert '<td class="verdict pass">yes</td>' in page and '<td class="verdict fail">no</td>' in page
    assert "2 of 3 predictions held where they are judged; 1 of them held there but not later" in page
    assert '<p class="note">This section uses built-in data.</p>' in page
    assert "reused from an earlier run, which computed it in" in page


def _captured(patch, section):
    """Record the figure a section saves (it is still saved)."""
    figures = []
    real = section.save_figure

    def keep(figure, directory, name):
        figures.append(figure)
        return real(figure, directory, name)

    patch.setattr(section, "save_figure", keep)
    return figures


def test_kernel_heatmaps_share_one_colour_scale(tmp_path):
    """Erf without bias: T(x, -x) < 0, where each panel used to get its own range."""
    from ntkit.report.sections import kernel

    config = resolve_config(
        {"model": {"activation": "erf", "b_std": 0.0, "width": 64}, "kernel": {"grid": 12}}, quick=True
    )
    ctx = Context(config, progress=False)
    with pytest.MonkeyPatch.context() as patch:
        figures = _captured(patch, kernel)
        result = kernel.run(ctx, tmp_path)
    empirical, analytic, difference = (ax.images[0] for ax in figures[0].axes[:3])
    low = min(result.metrics["empirical_ntk"].min(), result.metrics["analytic_ntk"].min())
    assert low < 0
    assert empirical.get_clim() == analytic.get_clim()
    vmin, vmax = empirical.get_clim()
    for matrix in (result.metrics["empirical_ntk"], result.metrics["analytic_ntk"]):
        assert vmin <= float(matrix.min()) and float(matrix.max()) <= vmax  # nothing clipped
    bound = float(result.metrics["difference"].abs().max())
    assert difference.get_clim() == pytest.approx((-bound, bound))


def test_digits_accuracy_plot_starts_at_step_0_with_its_legend_off_the_data(tmp_path):
    from ntkit.report.sections import digits

    config = resolve_config({"digits": {"n_train": 40, "n_test": 30, "width": 64, "steps": 20}})
    with pytest.MonkeyPatch.context() as patch:
        figures = _captured(patch, digits)
        digits.run(Context(config, progress=False), tmp_path)
    figure = figures[0]
    ax = figure.axes[0]
    assert ax.get_xlim()[0] == 0
    renderer = figure.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    points = np.concatenate([ax.transData.transform(line.get_xydata()) for line in ax.get_lines()])
    inside = (
        (points[:, 0] >= legend.x0)
        & (points[:, 0] <= legend.x1)
        & (points[:, 1] >= legend.y0)
        & (points[:, 1] <= legend.y1)
    )
    assert not inside.any(), points[inside]


def test_eigenvalue_indices_have_integer_ticks(tmp_path):
    from ntkit.report.sections import labels, spectrum

    config = resolve_config({"training": {"steps": 30}, "model": {"width": 64}}, quick=True)
    ctx = Context(config, progress=False)
    with pytest.MonkeyPatch.context() as patch:
        spectrum_figures, labels_figures = _captured(patch, spectrum), _captured(patch, labels)
        spectrum.run(ctx, tmp_path)
        labels.run(ctx, tmp_path)
    assert len(spectrum_figures) == len(labels_figures) == 1
    for figure in spectrum_figures + labels_figures:
        figure.canvas.draw()
        ax = figure.axes[0]
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def _closed_form_by_steps(kernel, kernel_test, y, f0, f0_test, rate, steps):
    """Discrete gradient descent on the linear model, step by step (the plain loop behind the closed form)."""
    f, g = f0.clone(), f0_test.clone()
    for _ in range(steps):
        residual = f - y
        f = f - rate / y.numel() * kernel @ residual
        g = g - rate / y.numel() * kernel_test @ residual
    return g


def test_user_test_points_give_test_error_on_the_page(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(30, 2))
    y = np.sin(2 * x[:, :1]) + x[:, 1:] ** 2
    header = "a,b,target"
    np.savetxt(tmp_path / "train.csv", np.hstack([x[:18], y[:18]]), delimiter=",", header=header, comments="")
    np.savetxt(tmp_path / "test.csv", np.hstack([x[18:], y[18:]]), delimiter=",", header=header, comments="")
    (tmp_path / "r.toml").write_text(
        'sections = ["training", "features"]\n[data]\nsource = "files"\ntrain = "train.csv"\n'
        'test = "test.csv"\ntarget = "target"\n[model]\nwidth = 128\n[training]\nsteps = 60\n'
    )
    out = tmp_path / "out"
    generate_report(tmp_path / "r.toml", out, quick=True, progress=False)
    page = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    test_loss = metrics["sections"]["training"]["test_loss"]
    assert "test loss after training (12 points), network / linearized / closed form" in page
    assert " / ".join(f"{test_loss[k][-1]:.3g}" for k in ("network", "linearized", "closed form")) in page
    # the closed form's test loss, against gradient descent on the linear model done step by step
    ctx = Context(metrics["config"], progress=False)  # the report's network: the same initial outputs
    f0, f0_eval = ctx.initial_outputs
    g = _closed_form_by_steps(
        ctx.kernel_train,
        ctx.kernel_eval_train[ctx.test_slice],
        ctx.data.y_train.double(),
        f0.double(),
        f0_eval[ctx.test_slice].double(),
        metrics["sections"]["training"]["learning_rate"],
        60,
    )
    expected = 0.5 * float((g - ctx.data.y_test).pow(2).mean())
    # the kernels are float64, the initial outputs float32 (the report's dtype) in both routes
    assert test_loss["closed form"][-1] == pytest.approx(expected, rel=1e-4)
    # the features section uses built-in data, and says so; the training section uses the user's
    assert page.count('<p class="note">') == 1
    assert "This section uses built-in data, a sigmoid network" in page
    assert f"not the data of your configuration (data.train = {tmp_path / 'train.csv'})" in page
    assert "Section(s) 6 use built-in data, not yours" in page


def test_sine_example_has_no_built_in_data_note(tmp_path):
    generate_report(
        {"sections": ["features"], "features": {"units": 2}}, tmp_path, quick=True, progress=False
    )
    assert '<p class="note">' not in (tmp_path / "report.html").read_text()


def test_without_test_points_no_test_curve_is_drawn(tmp_path):
    np.save(tmp_path / "x.npy", np.linspace(-1, 1, 12)[:, None] * np.ones((1, 2)))
    np.save(tmp_path / "y.npy", np.linspace(-1, 1, 12) ** 2)
    config = resolve_config(
        {
            "data": {"source": "files", "x_train": "x.npy", "y_train": "y.npy"},
            "model": {"width": 64},
            "training": {"steps": 20},
        },
        base_dir=tmp_path,
    )
    result = module("training").run(Context(config, progress=False), tmp_path)
    assert "test: network - closed form" not in result.metrics["relative_gap"]
    assert result.metrics["final_relative_gap_test"] is None
    assert "No test points were given" in result.caption
    assert torch.is_tensor(result.metrics["loss"]["network"])


def test_features_legend_is_below_the_panels(tmp_path):
    """The sigmoid units are drawn at random: a legend inside a panel can sit on their curves."""
    from ntkit.report.sections import features

    config = resolve_config({}, quick=True)
    with pytest.MonkeyPatch.context() as patch:
        figures = _captured(patch, features)
        features.run(Context(config, progress=False), tmp_path)
    figure = figures[0]
    assert all(ax.get_legend() is None for ax in figure.axes)
    (legend,) = figure.legends
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert all(box.y1 <= ax.get_window_extent(renderer).y0 for ax in figure.axes[2:])  # under the bottom row
