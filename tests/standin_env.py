"""Switching a host stand-in on and off in one test process (tests only).

The stand-ins provide top-level modules under the hosts' own names (``modules``, ``comfy``...), and
pytest imports every test file at collection time, so a stand-in is put on sys.path only while its
tests run: ``activate()`` evicts the modules it owns (and those under ``extra_prefixes``, e.g.
``lib_loratorio.webui``, whose cached host imports would be stale), puts its folders first on
sys.path and returns a token; ``deactivate(token)`` puts the previous modules and sys.path back.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Iterator, Sequence


class StandinEnv:
    def __init__(self, owned: Sequence[str], folders: Sequence[str]) -> None:
        self.owned, self.folders = tuple(owned), list(folders)

    def _owns(self, name: str, extra_prefixes: tuple) -> bool:
        return name.split(".")[0] in self.owned or any(name == p or name.startswith(p + ".") for p in extra_prefixes)

    def activate(self, extra_prefixes: Sequence[str] = ()) -> tuple:
        extra = tuple(extra_prefixes)
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if self._owns(k, extra)}
        saved_path = list(sys.path)
        sys.path[:] = self.folders + [p for p in sys.path if p not in self.folders]
        importlib.invalidate_caches()
        return saved, saved_path, extra

    def deactivate(self, token: tuple) -> None:
        saved, saved_path, extra = token
        for k in [k for k in sys.modules if self._owns(k, extra)]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = saved_path
        importlib.invalidate_caches()

    @contextlib.contextmanager
    def env(self, extra_prefixes: Sequence[str] = ()) -> Iterator[None]:
        token = self.activate(extra_prefixes)
        try:
            yield
        finally:
            self.deactivate(token)
