"""`ntkit reproduce`: published NTK experiments, one command each, with figures, metrics, checks and a page.

Each experiment is one module of this package with NAME, TITLE, SOURCE (the paper), CHECKS (what it checks,
one line), ``settings(quick)`` and ``run(run) -> Outcome``; `run_experiment` runs one and writes its files.
"""

from ._runner import EXPERIMENTS, experiment, run_experiment

__all__ = ["EXPERIMENTS", "experiment", "run_experiment"]
