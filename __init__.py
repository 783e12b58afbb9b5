"""ComfyUI entry point: ComfyUI imports this folder (cloned into custom_nodes/) as a node pack.

AUTOMATIC1111 and Forge never import it (they load scripts/ and install.py). Outside ComfyUI (no
``folder_paths`` / ``comfy`` to import, e.g. when a test runner imports the folder as a package) it
defines no nodes.
"""

import importlib.util

if importlib.util.find_spec("folder_paths") is not None and importlib.util.find_spec("comfy") is not None:
    from .lib_loratorio.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
