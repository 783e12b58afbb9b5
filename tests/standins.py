"""The host stand-ins, switched on and off in the test process: one mechanism for all four (tests only).

The stand-ins (``a1111_standin``, ``forge_standin`` overlaid on it, ``neo_standin`` on both, ``comfy_standin``)
provide top-level modules under the hosts' own names (``modules``, ``backend``, ``comfy``...), so none is on
sys.path at import time, and pytest's collection order cannot decide which one a test gets: a test module activates
the one it needs in a module-scoped fixture (``with A1111.active(): ...``). Activating evicts every stand-in module
and the LoRAtorio modules that import host code, puts the stand-in's folders first on sys.path and imports it
afresh, so that nothing a test module did to a host carries over to the next; leaving puts the previous modules and
sys.path back.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from collections.abc import Iterator, Sequence

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# every top-level name a stand-in provides, in any of them (the fake gradio is A1111's, used by Forge too)
OWNED = ("modules", "backend", "modules_forge", "networks", "network", "standin_models", "lora", "extra_networks_lora",
         "gradio", "comfy", "folder_paths", "nodes", "execution", "comfyui_models", "neo_overlay")
# Forge stand-in files the Neo stand-in loads privately (neo_overlay.forge_module)
PRIVATE_PREFIX = "_forge_"
# LoRAtorio's host code imports the host at import time; ComfyUI imports the repository as a custom-node package
HOST_CODE = ("lib_loratorio.webui", "lib_loratorio.comfyui", ROOT.replace(".", "_x_"))


class Standin:
    """One host's stand-in: the folders that go first on sys.path while it is active."""

    def __init__(self, *folders: str) -> None:
        self.folders = [os.path.join(TESTS, folder) for folder in folders]

    @staticmethod
    def _owned(name: str) -> bool:
        return (name.split(".")[0] in OWNED or name.startswith(PRIVATE_PREFIX)
                or any(name == p or name.startswith(p + ".") for p in HOST_CODE))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if self._owned(k)}
        saved_path = list(sys.path)
        sys.path[:] = self.folders + [p for p in sys.path if p not in self.folders]
        importlib.invalidate_caches()
        try:
            yield
        finally:
            for k in [k for k in sys.modules if self._owned(k)]:
                del sys.modules[k]
            sys.modules.update(saved)
            sys.path[:] = saved_path
            importlib.invalidate_caches()


A1111 = Standin("a1111_standin")
FORGE = Standin("forge_standin", "a1111_standin")  # Forge's files override A1111's, the rest falls through
NEO = Standin("neo_standin", "forge_standin", "a1111_standin")  # what Forge Neo changed, over the Forge stand-in
COMFYUI = Standin("comfy_standin")


def imported(names: Sequence[str]) -> types.SimpleNamespace:
    """The modules ``names`` (dotted; each under its last part's name) of the active stand-in."""
    return types.SimpleNamespace(**{name.split(".")[-1]: importlib.import_module(name) for name in names})
