"""``backend/diffusion_engine/chroma.py``: ``Chroma`` engine (Neo). ``clip.cond_stage_model.t5xxl`` only; conds: tensor
``[B, L, C]`` from T5 (min_length 1, no padding). Real CFG (not guidance-distilled)."""

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects


class Chroma(ForgeDiffusionEngine):
    def __init__(self, estimated_config, unet, clip, vae, name="standin-chroma"):
        super().__init__(estimated_config, name=name)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def get_learned_conditioning(self, prompt):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        clip = self.forge_objects.clip
        return clip.cond_stage_model.t5xxl.encode(clip.tokenizer.t5xxl.batch(list(prompt)))
