"""``backend/diffusion_engine/flux.py``: ``Flux`` engine. conds: ``{'crossattn': t5 [B, >=256, C],
'vector': clip_l pooled [B, C], 'guidance': FloatTensor([distilled_cfg_scale] * B)}`` (guidance only with
``use_distilled_cfg_scale``, i.e. Flux-dev; negative prompts get it too). ``model_config.huggingface_repo``
= "black-forest-labs/FLUX.1-dev"."""

import torch

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects


class Flux(ForgeDiffusionEngine):
    def __init__(self, estimated_config, unet, clip, vae, name="standin-flux1-dev", use_distilled_cfg_scale=True):
        super().__init__(estimated_config, name=name)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.use_distilled_cfg_scale = use_distilled_cfg_scale

    def get_learned_conditioning(self, prompt):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        clip = self.forge_objects.clip
        _, cond_l = clip.cond_stage_model.clip_l.encode_chunks(clip.tokenizer.clip_l.batch(list(prompt)), "last")
        cond_t5 = clip.cond_stage_model.t5xxl.encode(clip.tokenizer.t5xxl.batch(list(prompt)))
        cond = dict(crossattn=cond_t5, vector=cond_l)
        if self.use_distilled_cfg_scale:
            distilled_cfg_scale = getattr(prompt, 'distilled_cfg_scale', 3.5) or 3.5
            cond['guidance'] = torch.FloatTensor([distilled_cfg_scale] * len(prompt))
            print(f'Distilled CFG Scale: {distilled_cfg_scale}')
        else:
            print('Distilled CFG Scale will be ignored for Schnell')
        return cond
