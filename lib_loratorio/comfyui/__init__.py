"""ComfyUI host: the LoRAtorio node pack (see the repository root's ``__init__.py``, which ComfyUI imports).

The only code that touches ComfyUI's internals (``comfy.*``, ``folder_paths``): ``nodes.py`` the node classes
and their mappings, ``settings.py`` the settings inputs generated from LoratorioParams, ``stack.py`` the LoRA
stack the nodes pass along, ``composing.py`` the sampling hook on a clone of the model patcher and its
lifetime, ``weight_maps.py`` the weight-map pictures. Nothing here is imported by the WebUIs.
"""
