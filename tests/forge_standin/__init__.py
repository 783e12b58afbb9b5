"""Forge stand-in environment switch (tests only).

``tests/forge_standin`` is a sys.path OVERLAY on top of ``tests/a1111_standin``: with both on sys.path
(Forge first), ``import modules.processing`` gets the Forge override here, ``import modules.shared``
falls through to the A1111 stand-in file (see ``modules/__init__.py``), and ``backend``,
``modules_forge`` exist only here.

Both stand-ins use the same top-level module names (``modules``, ``networks``, ``standin_models``...),
and pytest imports every test file at collection time, so a test module must not simply put this folder
on sys.path at import time when A1111 stand-in tests run in the same process. Use::

    from tests import forge_standin
    token = forge_standin.activate()        # evicts the webui stand-in modules, puts Forge + A1111 on sys.path
    ...import modules.processing etc. here (e.g. in a module-scoped fixture)...
    forge_standin.deactivate(token)         # puts the previous modules and sys.path back

or ``with forge_standin.forge_env(): ...``.
"""

from __future__ import annotations

import os

from tests.standin_env import StandinEnv

FORGE_DIR = os.path.dirname(os.path.abspath(__file__))
A1111_DIR = os.path.join(os.path.dirname(FORGE_DIR), "a1111_standin")

# top-level names that both stand-ins (may) provide; the fake gradio is shared (it imports nothing of ours)
OWNED = ("modules", "backend", "modules_forge", "networks", "network", "standin_models", "lora", "extra_networks_lora")
_ENV = StandinEnv(OWNED, [FORGE_DIR, A1111_DIR])
activate, deactivate, forge_env = _ENV.activate, _ENV.deactivate, _ENV.env
