"""Run one experiment's quick version and read back what it wrote."""

import json

from ntkit.reproduce import experiment, run_experiment


def _reject_constant(name):
    raise AssertionError(f"metrics.json must be strict JSON, found {name}")


def quick_run(name, tmp_path):
    """Run ``name`` --quick into tmp_path and return its metrics.json, after checking the files exist."""
    out = tmp_path / name
    page = run_experiment(name, out, quick=True, progress=False)
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=_reject_constant)
    assert page == out / "index.html"
    html = page.read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    for figure in metrics["figures"]:
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
        assert (out / "figures" / f"{figure}.svg").read_text().lstrip().startswith("<?xml")
    assert metrics["experiment"] == name and metrics["source"] == experiment(name).SOURCE
    assert metrics["paper_vs_ours"], "the page must put the paper's values beside ours"
    assert metrics["checks"]
    return metrics


def failed_checks(metrics):
    return [f"{c['statement']}: {c['measured']}" for c in metrics["checks"] if not c["passed"]]
