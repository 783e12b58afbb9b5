"""``backend/patcher/lora.py`` (subset): ``LoraLoader`` (one per model, shared by all patcher clones)
and ``merge_lora_to_weight``.

Mirrored: ``refresh(lora_patches, offload_device)`` returns early when ``str(list(lora_patches.keys()))``
equals the loaded hash; otherwise restores every backed-up weight, then merges each key's patches into a
float32 copy and installs it with ``set_attr_raw`` as a NEW ``torch.nn.Parameter`` (the module objects
stay the same, ``module.weight`` becomes another Parameter; the original is kept in ``backup``).
Patch entries: ``[strength_patch, patch, strength_model, offset, function]``; ``offset = (dim, start,
length)`` narrows the weight (fused qkv). Patch types: ``("diff", (tensor,))`` and
``("lora", (up, down, alpha, mid, dora_scale))`` (alpha/rank scaling; mid and DoRA left out).
Left out: lokr/loha/glora/set, online LoRAs, bnb/GGUF re-quantization.
"""

import torch


def get_attr(obj, key):
    for name in key.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr_raw(obj, key, value):
    *parents, name = key.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, name, value)


def merge_lora_to_weight(patches, weight, key="online_lora", computation_dtype=torch.float32):
    weight_dtype = weight.dtype
    weight = weight.to(computation_dtype)
    for strength_patch, patch, strength_model, offset, function in patches:
        target = weight
        if offset is not None:
            target = weight.narrow(offset[0], offset[1], offset[2])
        if strength_model != 1.0:
            target *= strength_model
        kind, value = patch if isinstance(patch, tuple) and isinstance(patch[0], str) else ("diff", (patch,))
        if kind == "diff":
            delta = value[0].to(target)
        elif kind == "lora":
            up, down, alpha = value[0].to(target), value[1].to(target), value[2]
            scale = alpha / down.shape[0] if alpha is not None else 1.0
            delta = (up.flatten(1) @ down.flatten(1)).reshape(target.shape) * scale
        else:
            raise NotImplementedError(f"stand-in: patch type {kind!r} is left out")
        delta = delta * strength_patch
        if function is not None:
            delta = function(delta)
        target += delta
    return weight.to(weight_dtype)


class LoraLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])

    @torch.inference_mode(False)
    def refresh(self, lora_patches, offload_device=torch.device("cpu"), force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        for key, weight in self.backup.items():
            set_attr_raw(self.model, key, weight)
        self.backup = {}

        merged = {}
        for these in lora_patches.values():  # keys: (filename, strength_patch, strength_model, online_mode)
            for key, entries in these.items():
                merged.setdefault(key, []).extend(entries)

        for key, entries in merged.items():
            weight = get_attr(self.model, key)
            self.backup[key] = weight
            with torch.no_grad():
                new = merge_lora_to_weight(entries, weight.detach().clone(), key, torch.float32)
            set_attr_raw(self.model, key, torch.nn.Parameter(new, requires_grad=False))
        self.loaded_hash = hashes
