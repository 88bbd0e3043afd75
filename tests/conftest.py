"""Shared test settings: one torch thread per xdist worker, deterministic seeds, and the `slow` marker's opt-in."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The workers already use every core; torch's own threads on top of them only contend (measured: 3-8x slower).
    torch.set_num_threads(1)


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
