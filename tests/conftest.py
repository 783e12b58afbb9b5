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


def _host(name, tmp_path_factory):
    from tests.webui_hosts import webui_host

    with webui_host(name, str(tmp_path_factory.mktemp(f"Lora-{name}"))) as host:
        yield host


@pytest.fixture(scope="module", params=["a1111", "forge"])
def webui(request, one_thread, tmp_path_factory):
    """The WebUI stand-ins, one after the other: for what LoRAtorio does the same on A1111 and Forge."""
    yield from _host(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def a1111(one_thread, tmp_path_factory):
    yield from _host("a1111", tmp_path_factory)


@pytest.fixture(scope="module")
def forge(one_thread, tmp_path_factory):
    yield from _host("forge", tmp_path_factory)


@pytest.fixture(scope="module")
def neo(one_thread, tmp_path_factory):
    yield from _host("neo", tmp_path_factory)
