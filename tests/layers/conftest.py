"""Fixtures shared by the layer tests."""

import pytest

from ntkit.layers import _fused


@pytest.fixture
def fused_calls(monkeypatch):
    """The outcomes (True: ran fused) of every attempt to run a fused loop (layers/_fused.py) in the test."""
    outcomes: list[bool] = []
    run = _fused.run

    def counting_run(fn, *args):
        done, result = run(fn, *args)
        outcomes.append(done)
        return done, result

    monkeypatch.setattr(_fused, "run", counting_run)
    return outcomes
