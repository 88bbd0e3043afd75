"""Shared test settings: float64 by default, deterministic seeds, and the `slow` marker's opt-in."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NTKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow twin of a fast check; set NTKIT_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
