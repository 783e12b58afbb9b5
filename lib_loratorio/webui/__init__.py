"""Host adapters: the only code that touches the WebUI's internals (``modules.*``, ``backend.*``).

The host is detected once, at import: Forge ships ``modules_forge``; A1111 does not.
"""

from __future__ import annotations

import importlib.util

HOST = "forge" if importlib.util.find_spec("modules_forge") is not None else "a1111"
