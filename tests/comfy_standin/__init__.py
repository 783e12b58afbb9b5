"""ComfyUI stand-in environment switch (tests only), like ``tests/forge_standin``.

``tests/comfy_standin`` holds top-level ``comfy``, ``folder_paths``, ``nodes``, ``execution`` and
``comfyui_models`` modules. ``activate()`` puts the folder first on sys.path (after evicting any
module of those names, and of ``extra_prefixes``, e.g. ``lib_loratorio.comfyui``, which imports them),
``deactivate(token)`` puts everything back; or ``with comfy_env(): ...``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

COMFY_DIR = os.path.dirname(os.path.abspath(__file__))
OWNED = ("comfy", "folder_paths", "nodes", "execution", "comfyui_models")


def _owned(name: str, extra_prefixes: tuple) -> bool:
    return name.split(".")[0] in OWNED or any(name == p or name.startswith(p + ".") for p in extra_prefixes)


def activate(extra_prefixes=()):
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _owned(k, extra_prefixes)}
    saved_path = list(sys.path)
    sys.path[:] = [COMFY_DIR] + [p for p in sys.path if p != COMFY_DIR]
    importlib.invalidate_caches()
    return saved, saved_path, tuple(extra_prefixes)


def deactivate(token) -> None:
    saved, saved_path, extra_prefixes = token
    for k in [k for k in sys.modules if _owned(k, extra_prefixes)]:
        del sys.modules[k]
    sys.modules.update(saved)
    sys.path[:] = saved_path
    importlib.invalidate_caches()


@contextlib.contextmanager
def comfy_env(extra_prefixes=()):
    token = activate(extra_prefixes)
    try:
        yield
    finally:
        deactivate(token)
