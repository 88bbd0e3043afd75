"""Lee et al. 2019 (linearized networks), quick version: every check holds."""

from ._helpers import failed_checks, quick_run


def test_lee2019_quick(tmp_path):
    metrics = quick_run("lee2019-linearized", tmp_path)
    assert not failed_checks(metrics), failed_checks(metrics)
    mse = metrics["metrics"]["mse"]
    assert mse["network"][-1] < 0.5 * mse["network"][0]  # it trained
    ce = metrics["metrics"]["cross_entropy"]
    assert ce["linearized"][-1] < ce["linearized"][0]
