"""Finding LoRA files by the names the Lora cards show, through the built-in Lora extension, and the
LoRAs of the *Pool* setting (names or folders of the Lora directory)."""

from __future__ import annotations

import os

from modules import shared

from ..errors import LoratorioError


def _lora_module():
    try:
        import networks  # the built-in Lora extension's module (A1111: Lora, Forge: sd_forge_lora)
    except ImportError:
        raise LoratorioError("LoRAtorio finds LoRA files through the built-in Lora extension, which is not "
                             "loaded: enable 'Lora' in the Extensions tab and restart.") from None
    return networks


def resolve_lora(name: str, asked_in: str):
    """The built-in Lora extension's entry for NAME (alias, file name, or a subfolder path).

    ``asked_in``: where the name was written (a tag, or the pool), quoted when it is unknown.
    """
    networks = _lora_module()

    def lookup():
        if name.lower() in networks.forbidden_network_aliases:
            entry = networks.available_networks.get(name)
        else:
            entry = networks.available_network_aliases.get(name)
        if entry is None and ("/" in name or "\\" in name):
            wanted = os.path.normcase(os.path.normpath(name))
            entry = next((e for e in networks.available_networks.values()
                          if os.path.normcase(os.path.splitext(e.filename)[0]).endswith(wanted)), None)
        return entry

    entry = lookup()
    if entry is None:
        networks.list_available_networks()  # a file added since start-up
        entry = lookup()
    if entry is None:
        raise LoratorioError(
            f"Unknown LoRA '{name}' in {asked_in}: no LoRA file or alias of that name in the Lora folder. "
            "Use the name shown on its Lora card (names are case-sensitive).")
    return entry


def pool_names(pool: list[str]) -> list[str]:
    """The LoRA names of the *Pool* setting: a folder (absolute or in the Lora directory) stands for
    every .safetensors file under it."""
    names: list[str] = []
    for item in pool:
        folder = item if os.path.isabs(item) else os.path.join(shared.cmd_opts.lora_dir, item)
        if os.path.isdir(folder):
            for _, _, files in os.walk(folder):
                names += sorted(os.path.splitext(f)[0] for f in files if f.endswith(".safetensors"))
        else:
            names.append(item)
    return names
