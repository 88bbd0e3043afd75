"""Arora et al. 2019 (random labels), quick version: every check holds."""

from ._helpers import failed_checks, quick_run


def test_arora2019_quick(tmp_path):
    metrics = quick_run("arora2019-random-labels", tmp_path)
    assert not failed_checks(metrics), failed_checks(metrics)
    runs = metrics["metrics"]["runs"]
    assert runs[0]["fraction_changed"] == 0.0
    # about half of the randomised labels keep their value (fair coins)
    assert 0.3 < runs[-1]["fraction_changed"] < 0.7
    assert runs[0]["norm"] < runs[-1]["norm"]
