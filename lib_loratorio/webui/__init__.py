"""The WebUI hosts (A1111 1.10, Forge): the only code that touches their internals (``modules.*``, ``backend.*``).

``host.load_adapter()`` picks the adapter of the WebUI LoRAtorio runs in (``a1111.py``, ``forge.py``) once,
when the script loads; ``session.py`` holds what a generation keeps on both (tags, LoRA lookup, infotext,
text conditioning per branch), on top of the host-independent composing session of the core.
"""
