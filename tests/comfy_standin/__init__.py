"""ComfyUI stand-in environment switch (tests only), like ``tests/forge_standin``.

``tests/comfy_standin`` holds top-level ``comfy``, ``folder_paths``, ``nodes``, ``execution`` and
``comfyui_models`` modules. ``activate()`` puts the folder first on sys.path (after evicting any
module of those names, and of ``extra_prefixes``, e.g. ``lib_loratorio.comfyui``, which imports them),
``deactivate(token)`` puts everything back; or ``with comfy_env(): ...`` (see tests/standin_env.py).
"""

from __future__ import annotations

import os

from tests.standin_env import StandinEnv

COMFY_DIR = os.path.dirname(os.path.abspath(__file__))
OWNED = ("comfy", "folder_paths", "nodes", "execution", "comfyui_models")
_ENV = StandinEnv(OWNED, [COMFY_DIR])
activate, deactivate, comfy_env = _ENV.activate, _ENV.deactivate, _ENV.env
