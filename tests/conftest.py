"""Shared settings for the deltalearn test suite: one torch thread, everything seeded.

Run from the repository root with ``python -m pytest tests``.
"""
import random

import numpy as np
import pytest
import torch

# Tests are small; one thread is faster on a busy 2-core machine and makes float
# round-off independent of the thread count.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
