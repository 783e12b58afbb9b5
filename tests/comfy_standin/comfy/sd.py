"""``comfy/sd.py``: ``CLIP`` and ``load_lora_for_models`` (own rewrite, same interface).

Mirrored: ``CLIP`` with ``cond_stage_model`` (the text encoders as attributes named as ComfyUI names them:
``clip_l``, ``qwen3_4b``..., each holding its network in ``transformer``), ``tokenizer``, ``patcher`` (a
ModelPatcher over ``cond_stage_model``), ``clone()`` (shares ``cond_stage_model``), ``add_patches``,
``tokenize(text)``, ``load_model()`` (the patcher's weight patches merged), ``encode_from_tokens(tokens,
return_pooled, return_dict)`` and ``encode_from_tokens_scheduled(tokens)`` -> ``[[cond, {"pooled_output": ...}]]``.
``load_lora_for_models``: a clone of the model patcher gets the file's UNet differences (``add_patches(patches,
strength_model)``), a clone of the CLIP its text-encoder ones (``strength_clip``); ComfyUI merges them when it loads
the model. Stand-in only: the file formats read are ComfyUI's UNet naming (``diffusion_model.<module>``), its generic
text-encoder keys (``text_encoders.<encoder>.<module>``) and kohya's SD1 CLIP keys (``lora_te_<flat module>``), with
``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``; the encoding itself is the checkpoint's own function.
"""

import torch

import comfy.model_management
import comfy.model_patcher


class CLIP:
    def __init__(self, cond_stage_model=None, tokenizer=None, encode=None, no_init=False):
        if no_init:
            return
        self.cond_stage_model = cond_stage_model if cond_stage_model is not None else torch.nn.Module()
        self.tokenizer, self._encode = tokenizer, encode
        cpu = torch.device("cpu")
        self.patcher = comfy.model_patcher.ModelPatcher(self.cond_stage_model, cpu, cpu)

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model, n.tokenizer, n._encode = self.cond_stage_model, self.tokenizer, self._encode
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        return self.patcher.add_patches(patches, strength_patch, strength_model)

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return self.tokenizer(text)

    def load_model(self):
        comfy.model_management.load_models_gpu([self.patcher])
        return self.patcher

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        self.load_model()
        cond, pooled = self._encode(self.cond_stage_model, tokens)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        out = self.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        cond = out.pop("cond")
        out.update(add_dict or {})
        return [[cond, out]]


def _weight_diffs(lora, prefix):
    """{module: full weight difference} of the LoRA modules whose keys start with ``prefix``."""
    out = {}
    for key in lora:
        if not (key.startswith(prefix) and key.endswith(".lora_down.weight")):
            continue
        base = key[: -len(".lora_down.weight")]
        down, up = lora[key].float(), lora[base + ".lora_up.weight"].float()
        alpha = float(lora[base + ".alpha"]) if base + ".alpha" in lora else down.shape[0]
        out[base[len(prefix):]] = (up.flatten(1) @ down.flatten(1)) * (alpha / down.shape[0])
    return out


def _clip_patches(clip, lora):
    """The text-encoder part as ``cond_stage_model`` weight patches: generic keys by path, kohya keys by the flattened
    names of the first encoder's network (with or without ``text_model.``)."""
    patches = {f"{path}.weight": d for path, d in _weight_diffs(lora, "text_encoders.").items()}
    kohya = _weight_diffs(lora, "lora_te_")
    if kohya:
        key, encoder = next(iter(clip.cond_stage_model.named_children()))
        flat = {}
        for name, _ in encoder.transformer.named_modules():
            for alias in (name, name.removeprefix("text_model.")):
                flat[alias.replace(".", "_")] = f"{key}.transformer.{name}.weight"
        for module, d in kohya.items():
            patches[flat.get(module) or flat.get(module.removeprefix("text_model_"), module)] = d
    return patches


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    new_model = None
    if model is not None:
        patches = {f"diffusion_model.{m}.weight": d for m, d in _weight_diffs(lora, "diffusion_model.").items()}
        new_model = model.clone()
        new_model.add_patches(patches, strength_model)
        missing = set(patches) - set(new_model.model.state_dict())
        if missing:
            raise ValueError(f"lora keys not loaded: {sorted(missing)}")
    new_clip = None
    if clip is not None:
        new_clip = clip.clone()
        patches = _clip_patches(clip, lora)
        missing = set(patches) - set(new_clip.add_patches(patches, strength_clip))
        if missing:
            raise ValueError(f"lora keys not loaded: {sorted(missing)}")
    return new_model, new_clip
