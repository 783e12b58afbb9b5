"""Stand-in Forge engines (``backend.diffusion_engine.*``) built from tests/tiny_models.py.

``make_sd15_model()``  -> ``StableDiffusion``   forge_objects.unet.model.diffusion_model = ldm_view(tiny_sd15_unet())
                          (class switched to IntegratedUNet2DConditionModel), clip.cond_stage_model.clip_l
                          (tiny HF CLIPTextModel, hidden 32); conds [B, 77*k, 32]; eps ``Prediction``.
``make_sdxl_model()``  -> ``StableDiffusionXL`` ldm_view(tiny_sdxl_unet()), clip_l + clip_g (both HF CLIP, as in
                          Forge; clip_g has ``transformer.text_projection``); conds {"crossattn": [B, 77*k, 64],
                          "vector": [B, 80]}.
``make_flux_model()``  -> ``Flux`` (dev: ``use_distilled_cfg_scale``) with a tiny BFL-named
                          IntegratedFluxTransformer2DModel (hidden 32, 1 double + 1 single block), 16-channel
                          latents, ``PredictionFlux``; clip_l + t5xxl (tiny HF T5EncoderModel, d_model 32);
                          conds {"crossattn": [B, 256, 32], "vector": [B, 32], "guidance": [B]}.
Every ``nn.Linear`` of the UNet/DiT and text encoders is a ``backend.operations.ForgeOperations.Linear``
(plain nn.Module, not an nn.Linear subclass), sharing the original Parameters. VAE: toy (see
backend/patcher/vae.py). Tokenizers: the A1111 stand-in's crc32 ``ToyTokenizer`` (77-token chunks).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch
from torch import nn

_HERE = os.path.dirname(os.path.abspath(__file__))
_TESTS = os.path.dirname(_HERE)
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from backend.diffusion_engine.base import EstimatedConfig  # noqa: E402
from backend.diffusion_engine.flux import Flux  # noqa: E402
from backend.diffusion_engine.sd15 import StableDiffusion  # noqa: E402
from backend.diffusion_engine.sdxl import StableDiffusionXL  # noqa: E402
from backend.modules.k_prediction import Prediction, PredictionFlux  # noqa: E402
from backend.nn.flux import IntegratedFluxTransformer2DModel  # noqa: E402
from backend.nn.unet import as_integrated_unet  # noqa: E402
from backend.operations import use_forge_linear_layers  # noqa: E402
from backend.patcher.clip import CLIP  # noqa: E402
from backend.patcher.unet import UnetPatcher  # noqa: E402
from backend.patcher.vae import VAE  # noqa: E402
from tiny_models import ldm_view, tiny_clip_text, tiny_sd15_unet, tiny_sdxl_unet  # noqa: E402


def _a1111_standin_models():
    name = "_a1111_standin_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(_TESTS, "a1111_standin", "standin_models.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ToyTokenizer = _a1111_standin_models().ToyTokenizer
EOS = _a1111_standin_models().EOS


class ToyT5Tokenizer:
    """crc32 word ids + EOS 1, padded with 0 to at least ``min_length`` (Forge's T5 engine: 256)."""

    def __init__(self, min_length=256):
        self.min_length = min_length
        self.words = ToyTokenizer()

    def batch(self, texts):
        ids = [self.words.encode(t) + [1] for t in texts]
        length = max(self.min_length, max(len(i) for i in ids))
        return torch.tensor([i + [0] * (length - len(i)) for i in ids], dtype=torch.long)


class IntegratedCLIP(nn.Module):
    """``backend/nn/clip.py`` IntegratedCLIP: ``.transformer`` is a transformers CLIPTextModel (plus
    ``transformer.text_projection`` when it has one), ``logit_scale``."""

    def __init__(self, seed=0, hidden=32, add_text_projection=False):
        super().__init__()
        self.transformer = tiny_clip_text(hidden=hidden, seed=seed)
        if add_text_projection:
            g = torch.Generator().manual_seed(seed + 7)
            self.transformer.text_projection = nn.Linear(hidden, hidden, bias=False)
            with torch.no_grad():
                self.transformer.text_projection.weight.copy_(torch.randn(hidden, hidden, generator=g) / hidden ** 0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6055))

    def encode_chunks(self, tokens, layer="last"):
        """tokens [B, k, 77] -> (hidden [B, 77*k, C], pooled [B, C] from the first chunk's EOS)."""
        hidden, pooled = [], None
        for i in range(tokens.shape[1]):
            ids = tokens[:, i]
            out = self.transformer(input_ids=ids, output_hidden_states=True)
            hidden.append(out.last_hidden_state if layer == "last" else out.hidden_states[layer])
            if pooled is None:
                eos = (ids == EOS).int().argmax(dim=-1)
                pooled = out.last_hidden_state[torch.arange(ids.shape[0]), eos]
                projection = getattr(self.transformer, "text_projection", None)
                if projection is not None:
                    pooled = projection(pooled)
        return torch.cat(hidden, dim=1), pooled


class IntegratedT5(nn.Module):
    """``backend/nn/t5.py`` IntegratedT5 stand-in: ``.transformer`` = a tiny transformers T5EncoderModel
    (names ``transformer.encoder.block.N.layer.0.SelfAttention.{q,k,v,o}``, ``...layer.1.DenseReluDense.
    {wi_0,wi_1,wo}``, ``transformer.shared``)."""

    def __init__(self, seed=0, d_model=32):
        super().__init__()
        from transformers import T5Config, T5EncoderModel
        torch.manual_seed(seed)
        config = T5Config(vocab_size=1000, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                          feed_forward_proj="gated-gelu", dropout_rate=0.0)
        self.transformer = T5EncoderModel(config).eval()

    def encode(self, ids):
        return self.transformer(input_ids=ids).last_hidden_state


class FluxDevConfig(EstimatedConfig):
    """huggingface_guess ``model_list.Flux``: the family is the class attribute ``unet_config["image_model"]``."""
    unet_config = {"image_model": "flux", "guidance_embed": True}


def _clip(model_dict, tokenizer_dict):
    clip = CLIP(model_dict=model_dict, tokenizer_dict=tokenizer_dict)
    use_forge_linear_layers(clip.cond_stage_model)
    return clip


def _ldm_unet(diffusers_unet, config):
    view = as_integrated_unet(ldm_view(diffusers_unet), config)
    use_forge_linear_layers(view)
    return view


def make_sd15_model(name="standin-sd15", seed=0):
    config = dict(model_channels=32, in_channels=4, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
                  transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                  context_dim=32, num_head_channels=8, use_linear_in_transformer=False, adm_in_channels=None)
    unet = UnetPatcher.from_model(_ldm_unet(tiny_sd15_unet(seed=seed), config), config=config, k_predictor=Prediction())
    clip = _clip({"clip_l": IntegratedCLIP(seed=seed)}, {"clip_l": ToyTokenizer()})
    estimated = EstimatedConfig(huggingface_repo="runwayml/stable-diffusion-v1-5", is_inpaint=False)
    return StableDiffusion(estimated, unet, clip, VAE(latent_channels=4), name=name)


def make_sdxl_model(name="standin-sdxl", seed=0):
    config = dict(model_channels=32, in_channels=4, out_channels=4, num_res_blocks=[2, 2], channel_mult=[1, 2],
                  transformer_depth=[0, 0, 2, 2], transformer_depth_output=[0, 0, 0, 2, 2, 2], transformer_depth_middle=2,
                  context_dim=64, num_head_channels=None, use_linear_in_transformer=True, adm_in_channels=80)
    unet = UnetPatcher.from_model(_ldm_unet(tiny_sdxl_unet(seed=seed), config), config=config, k_predictor=Prediction())
    clip = _clip({"clip_l": IntegratedCLIP(seed=seed), "clip_g": IntegratedCLIP(seed=seed + 1, add_text_projection=True)},
                 {"clip_l": ToyTokenizer(), "clip_g": ToyTokenizer()})
    estimated = EstimatedConfig(huggingface_repo="stabilityai/stable-diffusion-xl-base-1.0", is_inpaint=False)
    return StableDiffusionXL(estimated, unet, clip, VAE(latent_channels=4), name=name)


def make_flux_model(name="standin-flux1-dev", seed=0, depth=1, depth_single_blocks=1):
    torch.manual_seed(seed)
    config = dict(in_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=32, mlp_ratio=4.0, num_heads=4, depth=depth,
                  depth_single_blocks=depth_single_blocks, axes_dim=[2, 2, 4], theta=10000, qkv_bias=True, guidance_embed=True)
    dit = IntegratedFluxTransformer2DModel(**config).eval()
    unet = UnetPatcher.from_model(dit, config=config, k_predictor=PredictionFlux())
    clip = _clip({"clip_l": IntegratedCLIP(seed=seed), "t5xxl": IntegratedT5(seed=seed + 2)},
                 {"clip_l": ToyTokenizer(), "t5xxl": ToyT5Tokenizer()})
    estimated = FluxDevConfig(huggingface_repo="black-forest-labs/FLUX.1-dev", is_inpaint=False)
    return Flux(estimated, unet, clip, VAE(latent_channels=16), name=name)
