"""``backend/diffusion_engine/base.py``: ``ForgeObjects`` and ``ForgeDiffusionEngine``.

Mirrored: ``ForgeObjects(unet, clip, vae, clipvision)`` with ``shallow_copy()``; the engine's
``forge_objects`` / ``forge_objects_original`` / ``forge_objects_after_applying_lora``,
``current_lora_hash = str([])``, ``model_config`` (``huggingface_repo``, ``inpaint_model()``),
``is_inpaint``, the backward-compatibility flags (``tiling_enabled``, ``first_stage_model = None``,
``cond_stage_model = None``, ``use_distilled_cfg_scale``, ``is_sd1/2/sdxl/sd3``),
``is_webui_legacy_model()``, ``set_clip_skip``, ``get_prompt_lengths_on_ui``. The engines have NO
``.model`` attribute. Stand-in additions (set by sd_models in the real WebUI): ``sd_checkpoint_info``,
``sd_model_hash``, ``sd_model_checkpoint``, ``filename``, ``extra_generation_params``, ``comments``.
"""

import types


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


def checkpoint_info(name):
    return types.SimpleNamespace(filename=f"/models/Stable-diffusion/{name}.safetensors", title=f"{name}.safetensors [0000000000]",
                                 short_title=f"{name} [0000000000]", name=f"{name}.safetensors", name_for_extra=name,
                                 model_name=name, hash="00000000", sha256="0" * 64, shorthash="0000000000")


class EstimatedConfig(types.SimpleNamespace):
    """Stand-in for the huggingface_guess config object."""

    def inpaint_model(self):
        return getattr(self, "is_inpaint", False)


class ForgeDiffusionEngine:
    matched_guesses = []

    def __init__(self, estimated_config, huggingface_components=None, name="standin"):
        self.model_config = estimated_config
        self.is_inpaint = estimated_config.inpaint_model()
        self.forge_objects = None
        self.forge_objects_original = None
        self.forge_objects_after_applying_lora = None
        self.current_lora_hash = str([])
        self.fix_for_webui_backward_compatibility()
        self.sd_checkpoint_info = checkpoint_info(name)
        self.sd_model_hash = self.sd_checkpoint_info.shorthash
        self.sd_model_checkpoint = self.sd_checkpoint_info.filename
        self.filename = self.sd_checkpoint_info.filename
        self.extra_generation_params = {}
        self.comments = []
        self.clip_skip = 1

    def set_clip_skip(self, clip_skip):
        self.clip_skip = clip_skip

    def get_first_stage_encoding(self, x):
        return x

    def get_learned_conditioning(self, prompt):
        pass

    def encode_first_stage(self, x):
        sample = self.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
        return sample

    def decode_first_stage(self, x):
        sample = self.forge_objects.vae.decode(x).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)

    def get_prompt_lengths_on_ui(self, prompt):
        return 0, 75

    def is_webui_legacy_model(self):
        return self.is_sd1 or self.is_sd2 or self.is_sdxl or self.is_sd3

    def fix_for_webui_backward_compatibility(self):
        self.tiling_enabled = False
        self.first_stage_model = None
        self.cond_stage_model = None
        self.use_distilled_cfg_scale = False
        self.is_sd1 = False
        self.is_sd2 = False
        self.is_sdxl = False
        self.is_sd3 = False
