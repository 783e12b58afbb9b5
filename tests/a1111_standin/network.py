"""Stand-in for ``extensions-builtin/Lora/network.py`` (A1111 v1.10.1): SdVersion, NetworkOnDisk, Network.

Mirrored: metadata from the safetensors header (``__metadata__``), reordered by metadata_tags_order;
``alias = metadata.get('ss_output_name', name)``; ``hash`` from ``sshs_model_hash`` else the file hash;
``shorthash = hash[:12]`` registered in ``networks.available_network_hash_lookup``; ``detect_version``;
``get_alias()`` (name when opts.lora_preferred_name == "Filename" or the alias is forbidden).
Stand-in difference: the hash is computed eagerly (AddNet-style sha256 of the tensor bytes for
safetensors, sha256 of the whole file otherwise); the real one is '' until cached/first load.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import struct

from modules import errors, shared

metadata_tags_order = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10, "ss_tag_frequency": 20}


class SdVersion(enum.Enum):
    Unknown = 1
    SD1 = 2
    SD2 = 3
    SDXL = 4


def read_metadata_from_safetensors(filename):
    with open(filename, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return dict(header.get("__metadata__", {}) or {})


def _file_hash(filename, addnet):
    h = hashlib.sha256()
    with open(filename, "rb") as f:
        if addnet:
            n = struct.unpack("<Q", f.read(8))[0]
            f.seek(n + 8)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename
        self.metadata = {}
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        if self.is_safetensors:
            try:
                self.metadata = read_metadata_from_safetensors(filename)
            except Exception as e:
                errors.display(e, f"reading lora {filename}")
        if self.metadata:
            self.metadata = dict(sorted(self.metadata.items(), key=lambda x: metadata_tags_order.get(x[0], 999)))
        self.alias = self.metadata.get("ss_output_name", self.name)
        self.hash = None
        self.shorthash = None
        self.set_hash(self.metadata.get("sshs_model_hash") or _file_hash(filename, self.is_safetensors) or "")
        self.sd_version = self.detect_version()

    def detect_version(self):
        if str(self.metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
            return SdVersion.SDXL
        if str(self.metadata.get("ss_v2", "")) == "True":
            return SdVersion.SD2
        if len(self.metadata):
            return SdVersion.SD1
        return SdVersion.Unknown

    def set_hash(self, v):
        self.hash = v
        self.shorthash = self.hash[0:12]
        if self.shorthash:
            import networks
            networks.available_network_hash_lookup[self.shorthash] = self

    def read_hash(self):
        if not self.hash:
            self.set_hash(_file_hash(self.filename, self.is_safetensors))

    def get_alias(self):
        import networks
        if shared.opts.lora_preferred_name == "Filename" or self.alias.lower() in networks.forbidden_network_aliases:
            return self.name
        return self.alias


class Network:
    def __init__(self, name, network_on_disk: NetworkOnDisk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}
        self.bundle_embeddings = {}
        self.mtime = None
        self.mentioned_name = None
