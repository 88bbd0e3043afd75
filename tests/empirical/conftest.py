"""Settings for the empirical NTK tests: one intra-op thread.

The tests use tiny models, where OpenMP threads only add synchronisation; on a shared, busy machine that
overhead grows by orders of magnitude (a 2-thread im2col of a 2x8x8 image took 70 ms instead of 30 us).
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
