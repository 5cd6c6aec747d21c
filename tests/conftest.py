"""Test-wide settings: the suite runs as two pytest-xdist workers on two cores, so each uses one torch thread."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny problems: one intra-op thread avoids oversubscribing the 2 shared cores (restored afterwards). Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
