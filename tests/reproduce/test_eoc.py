"""Edge-of-chaos concentration, quick version: every check holds."""

from ._helpers import failed_checks, quick_run


def test_eoc_quick(tmp_path):
    metrics = quick_run("eoc-concentration", tmp_path)
    assert not failed_checks(metrics), failed_checks(metrics)
    numbers = metrics["metrics"]
    for depth, table in numbers["constant_widths"].items():
        for base, width in table.items():  # the constant width really has the quadratic network's size
            quadratic = numbers["quadratic_widths"][depth][base]
            assert quadratic[0] < width < quadratic[-1]
