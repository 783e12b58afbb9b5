"""``backend/diffusion_engine/sdxl.py``: ``StableDiffusionXL`` engine. conds:
``{'crossattn': cat(clip_l penultimate, clip_g penultimate), 'vector': cat(clip_g pooled (text_projection),
size embeddings)}``; an all-empty negative prompt batch is zeroed (``force_zero_negative_prompt``)."""

import math

import torch

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects


def size_embedding(values, dim=8):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor(values, dtype=torch.float32)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).flatten()


class StableDiffusionXL(ForgeDiffusionEngine):
    def __init__(self, estimated_config, unet, clip, vae, name="standin-sdxl"):
        super().__init__(estimated_config, name=name)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sdxl = True

    def get_learned_conditioning(self, prompt):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        clip = self.forge_objects.clip
        width = getattr(prompt, 'width', 1024) or 1024
        height = getattr(prompt, 'height', 1024) or 1024
        is_negative_prompt = getattr(prompt, 'is_negative_prompt', False)
        force_zero_negative_prompt = is_negative_prompt and all(x == '' for x in prompt)

        tokens = clip.tokenizer.clip_l.batch(list(prompt))
        cond_l, _ = clip.cond_stage_model.clip_l.encode_chunks(tokens, -2)
        cond_g, clip_pooled = clip.cond_stage_model.clip_g.encode_chunks(tokens, -2)
        sizes = size_embedding([height, width, 0, 0, height, width])
        if force_zero_negative_prompt:
            clip_pooled = torch.zeros_like(clip_pooled)
            cond_l = torch.zeros_like(cond_l)
            cond_g = torch.zeros_like(cond_g)
        return dict(crossattn=torch.cat([cond_l, cond_g], dim=2),
                    vector=torch.cat([clip_pooled, sizes.expand(clip_pooled.shape[0], -1)], dim=1))
