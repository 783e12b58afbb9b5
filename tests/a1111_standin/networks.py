"""Stand-in for ``extensions-builtin/Lora/networks.py`` (A1111 v1.10.1), imported as top-level ``networks``.

Mirrored: the module globals (available_networks, available_network_aliases, forbidden_network_aliases
pre-seeded with {"none", "Addams"}, available_network_hash_lookup, loaded_networks, networks_in_memory),
``process_network_files`` (recursive walk of ``cmd_opts.lora_dir`` and ``lyco_dir_backcompat`` for
.pt/.ckpt/.safetensors; name = file stem without subfolder, last one walked wins; alias collisions
become forbidden), ``list_available_networks`` and the name resolution of ``load_networks``.
Left out: reading weights / patching modules (``load_networks`` here only builds empty ``Network``
entries with multipliers and ``mentioned_name``), lora_patches, the UI page.
"""

from __future__ import annotations

import os

import network
from modules import shared

available_networks = {}
available_network_aliases = {}
forbidden_network_aliases = {}
available_network_hash_lookup = {}
loaded_networks = []
networks_in_memory = {}
loaded_bundle_embeddings = {}


def process_network_files(names: list[str] | None = None):
    candidates = list(shared.walk_files(shared.cmd_opts.lora_dir, allowed_extensions=[".pt", ".ckpt", ".safetensors"]))
    candidates += list(shared.walk_files(shared.cmd_opts.lyco_dir_backcompat, allowed_extensions=[".pt", ".ckpt", ".safetensors"]))
    for filename in candidates:
        if os.path.isdir(filename):
            continue
        name = os.path.splitext(os.path.basename(filename))[0]
        if names and name not in names:
            continue
        try:
            entry = network.NetworkOnDisk(name, filename)
        except OSError:
            from modules import errors
            errors.report(f"Failed to load network {name} from {filename}", exc_info=True)
            continue
        available_networks[name] = entry
        if entry.alias in available_network_aliases:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_network_aliases[name] = entry
        available_network_aliases[entry.alias] = entry


def update_available_networks_by_names(names: list[str]):
    process_network_files(names)


def list_available_networks():
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    available_network_hash_lookup.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    if shared.cmd_opts.lora_dir:
        os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    process_network_files()


def _lookup(name):
    if name.lower() in forbidden_network_aliases:
        return available_networks.get(name, None)
    return available_network_aliases.get(name, None)


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    """Name resolution and bookkeeping of the real load_networks (no weights are read here)."""
    networks_on_disk = [_lookup(name) for name in names]
    if any(x is None for x in networks_on_disk):
        list_available_networks()
        networks_on_disk = [_lookup(name) for name in names]

    failed = []
    loaded_networks.clear()
    for i, (disk, name) in enumerate(zip(networks_on_disk, names)):
        if disk is None:
            failed.append(name)
            continue
        net = networks_in_memory.get(name) or network.Network(name, disk)
        net.mentioned_name = name
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)
    if failed:
        print("Networks not found: " + ", ".join(failed))
    return loaded_networks
