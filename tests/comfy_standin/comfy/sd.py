"""``comfy/sd.py``: ``load_lora_for_models`` (own rewrite, model part only, one file format).

Mirrored: a clone of the model patcher gets the file's weight differences as ``add_patches(patches,
strength_model)``; ComfyUI merges them into the weights when it loads the model for sampling. Stand-in only:
the file format is ComfyUI's own diffusion-model naming (``diffusion_model.<module>.lora_down.weight``,
``.lora_up.weight``, ``.alpha``), turned into full weight differences here; CLIP parts are not read.
"""



def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    patches = {}
    for key in lora:
        if not key.endswith(".lora_down.weight"):
            continue
        base = key[: -len(".lora_down.weight")]
        down, up = lora[key].float(), lora[base + ".lora_up.weight"].float()
        alpha = float(lora[base + ".alpha"]) if base + ".alpha" in lora else down.shape[0]
        diff = (up.flatten(1) @ down.flatten(1)) * (alpha / down.shape[0])
        patches[base + ".weight"] = diff
    new_model = model.clone()
    new_model.add_patches({k: v for k, v in patches.items()}, strength_model)
    missing = set(patches) - set(new_model.model.state_dict())
    if missing:
        raise ValueError(f"lora keys not loaded: {sorted(missing)}")
    return new_model, clip
