"""Shared test settings: one torch thread, deterministic seeds, and the `slow` marker's opt-in."""

import os

import pytest
import torch

# The tests use small tensors, where intra-op threads only add synchronisation, and the xdist workers already
# use every core; on a busy machine OpenMP spinning made the suite 15x slower (536 s against 34 s).
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
