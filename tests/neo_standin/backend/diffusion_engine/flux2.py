"""``backend/diffusion_engine/flux2.py``: ``Flux2`` engine (Neo: Flux.2 Klein 4B/9B). ``clip.cond_stage_model.qwen3``;
conds: tensor ``[B, L, 3C]``, three hidden states of the templated prompt concatenated (Klein's text engine).
Not guidance-distilled in the CFG sense Forge knows (no ``use_distilled_cfg_scale``; Klein has no guidance
embedding). The prompt (not the negative prompt) sets ``dynamic_args.ref_latents`` to the img2img/ImageStitch
references, which the transformer appends after the image tokens."""

import torch

from backend import memory_management
from backend.args import dynamic_args
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects


class Flux2(ForgeDiffusionEngine):
    def __init__(self, estimated_config, unet, clip, vae, name="standin-flux2-klein"):
        super().__init__(estimated_config, name=name)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.ref_latents = []

    def get_learned_conditioning(self, prompt):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        if not getattr(prompt, "is_negative_prompt", False):
            dynamic_args.ref_latents = list(self.ref_latents)
        clip = self.forge_objects.clip
        states = clip.cond_stage_model.qwen3.hidden_states(clip.tokenizer.qwen3.batch(list(prompt)))
        return torch.cat([states[-1], states[-2], states[-3]], dim=-1)
