"""Jacot et al. 2018, figures 1-3, quick versions: every check holds, and the numbers behind them are sane."""

import math

from ._helpers import failed_checks, quick_run


def test_fig1_quick(tmp_path):
    metrics = quick_run("jacot2018-fig1", tmp_path)
    assert not failed_checks(metrics), failed_checks(metrics)
    numbers = metrics["metrics"]
    assert -0.75 <= numbers["spread_slope"] <= -0.25
    assert numbers["drift_mean"][0] > numbers["drift_mean"][-1] > 0
    assert len(numbers["limit"]) == metrics["settings"]["angles"]


def test_fig2_quick(tmp_path):
    metrics = quick_run("jacot2018-fig2", tmp_path)
    assert not failed_checks(metrics), failed_checks(metrics)
    numbers = metrics["metrics"]
    sd = numbers["limit_sd"]
    # the limit's spread vanishes at the training points (interpolation) and not elsewhere
    assert min(sd) < 0.05 * max(sd) and max(sd) > 0
    assert all(0 <= v <= 1 for v in numbers["inside_10_90"].values())
    assert not any(math.isnan(v) for v in numbers["spread_ratio"].values())


def test_fig3_quick(tmp_path):
    metrics = quick_run("jacot2018-fig3", tmp_path)
    assert not failed_checks(metrics), failed_checks(metrics)
    numbers = metrics["metrics"]
    eigenvalues = numbers["eigenvalues"]
    assert eigenvalues == sorted(eigenvalues, reverse=True) and eigenvalues[-1] > -1e-9
    assert any("digits" in note for note in metrics["notes"])  # the dataset substitution is said on the page
