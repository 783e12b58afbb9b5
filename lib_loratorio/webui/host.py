"""Which WebUI LoRAtorio runs in, detected once at import, and that host's adapter.

Forge ships ``modules_forge``; its current version (since August 2024) has the ``backend`` package and no
``ldm_patched``, which the older Forge (and forks built on it, such as reForge) still carry: LoRAtorio hooks
the current one only.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .adapter import HostAdapter


def _detect() -> str:
    if importlib.util.find_spec("modules_forge") is None:
        return "a1111"
    if importlib.util.find_spec("ldm_patched") is None and importlib.util.find_spec("backend") is not None:
        return "forge"
    return "forge-legacy"


HOST = _detect()


def load_adapter() -> HostAdapter:
    """The adapter of the detected host (each imports its own host's modules, so only one is imported)."""
    if HOST == "a1111":
        from .a1111 import ADAPTER
    elif HOST == "forge":
        from .forge import ADAPTER
    else:
        from .adapter import UNSUPPORTED as ADAPTER
    return ADAPTER
