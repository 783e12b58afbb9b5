"""``backend/diffusion_engine/sd15.py``: ``StableDiffusion`` engine. conds: tensor ``[B, 77*k, C]`` from
``clip_l`` (last layer, with the final LayerNorm; clip skip picks an earlier hidden state)."""

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects


class StableDiffusion(ForgeDiffusionEngine):
    def __init__(self, estimated_config, unet, clip, vae, name="standin-sd15"):
        super().__init__(estimated_config, name=name)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd1 = True

    def get_learned_conditioning(self, prompt):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        clip = self.forge_objects.clip
        tokens = clip.tokenizer.clip_l.batch(list(prompt))
        layer = "last" if self.clip_skip <= 1 else -self.clip_skip
        return clip.cond_stage_model.clip_l.encode_chunks(tokens, layer)[0]
