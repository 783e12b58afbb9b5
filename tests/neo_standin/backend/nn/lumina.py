"""``backend/nn/lumina.py`` of Forge Neo 2.26: ``NextDiT`` (ComfyUI's port; Lumina 2 and Z-Image), here
``tests/tiny_dits.TinyNextDiT``."""

from tiny_dits import TinyNextDiT as NextDiT  # noqa: F401
