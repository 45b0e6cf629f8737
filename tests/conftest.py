"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny problems on one intra-op thread: on a busy 2-core machine torch's
    default of one thread per core is many times slower (spin-waiting); results don't depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global RNG state (torch, numpy, random), whatever ran before
    it, so a test that draws unseeded data is still deterministic (and a failure reproducible with
    ``pytest path::test``)."""
    import random

    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield
