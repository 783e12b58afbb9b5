"""``nodes.py``: the core nodes a LoRAtorio workflow uses, and custom-node loading (own rewrite, same interface).

Mirrored: the classic node API (``INPUT_TYPES`` classmethod with "required"/"optional", ``RETURN_TYPES``,
``FUNCTION``, ``CATEGORY``, ``OUTPUT_NODE``); the class names and inputs of ``CheckpointLoaderSimple``,
``CLIPTextEncode``, ``EmptyLatentImage``, ``KSampler`` (-> ``common_ksampler``: noise from the seed, the
schedule cut by ``denoise``, the latent's ``noise_mask``, ``comfy.samplers.sample`` with a progress callback that
raises ``InterruptProcessingException`` once ``interrupt_current_processing()`` was called, as ComfyUI's progress
hook does), ``VAEDecode``, ``VAEEncode``, ``SetLatentNoiseMask``, ``ImageCompositeMasked``
(``comfy_extras/nodes_mask.py``), ``LoraLoader``, ``LoraLoaderModelOnly``, ``PreviewImage``; ``NODE_CLASS_MAPPINGS``;
``load_custom_node(path)`` (a folder's ``__init__.py`` loaded with ``spec_from_file_location`` under the folder's
path as module name, its ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` merged into ours).
Stand-in only: checkpoints are ``comfyui_models.load_checkpoint``'s (tiny CLIPs); the LoRA loaders read the file
formats comfy/sd.py names.
"""

import importlib.util
import os
import sys

import comfy.model_management
import comfy.samplers
import comfy.sd
import comfyui_models
import folder_paths
import safetensors.torch
import torch


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    def load_checkpoint(self, ckpt_name):
        return comfyui_models.load_checkpoint(ckpt_name)


class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    def encode(self, clip, text):
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class EmptyHunyuanLatentVideo:
    """``comfy_extras/nodes_hunyuan.py`` (the empty latent of Wan's workflows): [B, 16, (length - 1) // 4 + 1, h, w]."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 848}), "height": ("INT", {"default": 480}),
                             "length": ("INT", {"default": 25}), "batch_size": ("INT", {"default": 1})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    def generate(self, width, height, length, batch_size=1):
        return ({"samples": torch.zeros([batch_size, 16, (length - 1) // 4 + 1, height // 8, width // 8])},)


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 512}), "height": ("INT", {"default": 512}),
                             "batch_size": ("INT", {"default": 1})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    def generate(self, width, height, batch_size=1):
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0):
    latent_image = latent["samples"]
    channels = comfyui_models.latent_channels(model)
    if latent_image.shape[1] != channels:  # as comfy.sample.fix_empty_latent_channels
        latent_image = torch.zeros([latent_image.shape[0], channels, *latent_image.shape[2:]])
    if comfyui_models.latent_dimensions(model) == 3 and latent_image.dim() == 4:  # (and a video model's: 5-D)
        latent_image = latent_image.unsqueeze(2)
    generator = torch.manual_seed(seed)
    noise = torch.randn(latent_image.size(), generator=generator)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps, denoise)

    def callback(step, x0, x, total_steps):
        comfy.model_management.throw_exception_if_processing_interrupted()

    samples = comfy.samplers.sample(model, noise, positive, negative, cfg, model.load_device,
                                    comfy.samplers.sampler_object(sampler_name), sigmas, latent_image=latent_image,
                                    denoise_mask=latent.get("noise_mask"), callback=callback, seed=seed)
    return ({**latent, "samples": samples},)


class KSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",), "seed": ("INT", {"default": 0}), "steps": ("INT", {"default": 20}),
            "cfg": ("FLOAT", {"default": 8.0}), "sampler_name": (["euler", "heun"],),
            "scheduler": (["simple", "normal"],), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",), "denoise": ("FLOAT", {"default": 1.0})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise)


class VAEDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    def decode(self, vae, samples):
        return (vae.decode(samples["samples"]),)


class VAEEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    def encode(self, vae, pixels):
        return ({"samples": vae.encode(pixels)},)


class SetLatentNoiseMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"

    def set_mask(self, samples, mask):
        return ({**samples, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))},)


class ImageCompositeMasked:
    """``comfy_extras/nodes_mask.py``: ``source`` pasted over ``destination`` at (x, y) through ``mask`` (bilinear to
    the source's size). Stand-in: x, y multiples of 8 only as the real node's pixel positions, no resize."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"destination": ("IMAGE",), "source": ("IMAGE",), "x": ("INT", {"default": 0}),
                             "y": ("INT", {"default": 0}), "resize_source": ("BOOLEAN", {"default": False})},
                "optional": {"mask": ("MASK",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "composite"

    def composite(self, destination, source, x, y, resize_source, mask=None):
        out = destination.clone()
        height, width = source.shape[1:3]
        if mask is None:
            mask = torch.ones(source.shape[:3])
        mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=(height, width),
                                               mode="bilinear")[:, 0, ..., None]
        region = out[:, y:y + height, x:x + width]
        out[:, y:y + height, x:x + width] = region * (1 - mask) + source[:, :region.shape[1], :region.shape[2]] * mask
        return (out,)


class LoraLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",),
                             "lora_name": (folder_paths.get_filename_list("loras"),),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}),
                             "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0})}}

    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"

    def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
        lora = safetensors.torch.load_file(folder_paths.get_full_path_or_raise("loras", lora_name))
        return comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)


class LoraLoaderModelOnly:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "lora_name": (folder_paths.get_filename_list("loras"),),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"

    def load_lora_model_only(self, model, lora_name, strength_model):
        if strength_model == 0:
            return (model,)
        lora = safetensors.torch.load_file(folder_paths.get_full_path_or_raise("loras", lora_name))
        return (comfy.sd.load_lora_for_models(model, None, lora, strength_model, 0)[0],)


class PreviewImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    def save_images(self, images, filename_prefix="ComfyUI"):
        return {"ui": {"images": [{"filename": f"preview_{i:05}.png", "type": "temp"} for i in range(len(images))]},
                "result": (images,)}


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple, "CLIPTextEncode": CLIPTextEncode,
    "EmptyLatentImage": EmptyLatentImage, "EmptyHunyuanLatentVideo": EmptyHunyuanLatentVideo,
    "KSampler": KSampler, "VAEDecode": VAEDecode,
    "LoraLoader": LoraLoader, "LoraLoaderModelOnly": LoraLoaderModelOnly, "PreviewImage": PreviewImage,
    "SaveImage": PreviewImage,
    "VAEEncode": VAEEncode, "SetLatentNoiseMask": SetLatentNoiseMask, "ImageCompositeMasked": ImageCompositeMasked,
}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}


def load_custom_node(module_path):
    """Import a custom node folder as ComfyUI does and register its nodes; returns the module."""
    sys_module_name = module_path.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(sys_module_name, os.path.join(module_path, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[sys_module_name] = module
    spec.loader.exec_module(module)
    NODE_CLASS_MAPPINGS.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    return module
