"""``backend/diffusion_engine/zimage.py``: ``ZImage`` engine (Neo). ``clip.cond_stage_model.qwen3`` (a Qwen3 language
model); conds: tensor ``[B, L, C]``, the second-to-last hidden state of the chat-templated prompt, ``L`` the prompt's own
token count (no padding; prompt_parser.stack_conds pads a batch's shorter prompts). ``use_shift``."""

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects


class ZImage(ForgeDiffusionEngine):
    def __init__(self, estimated_config, unet, clip, vae, name="standin-z-image"):
        super().__init__(estimated_config, name=name)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.use_shift = True

    def get_learned_conditioning(self, prompt):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        clip = self.forge_objects.clip
        return clip.cond_stage_model.qwen3.hidden_states(clip.tokenizer.qwen3.batch(list(prompt)))[-2]
