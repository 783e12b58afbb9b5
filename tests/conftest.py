import os
import sys

import pytest
import torch

# The repository root is the extension folder: make `lib_loratorio` importable without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def one_thread():
    """The tiny networks are too small for intra-op threads; on a busy 2-core box they made runs ~4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
