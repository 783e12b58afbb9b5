"""Stand-in Forge Neo engines: the Forge stand-in's (``make_sd15_model``, ``make_sdxl_model``, ``make_flux_model``)
and the families Neo added, built from tests/tiny_dits.py with tiny random text encoders.

``make_flux2_model()``  -> ``Flux2`` (Klein: no guidance embedding), ``IntegratedFlux2Transformer`` (hidden 32, latent
                           32 channels, one token per latent pixel), ``qwen3`` text encoder (conds [B, L, 96]).
``make_chroma_model()`` -> ``Chroma``, ``IntegratedChromaTransformer2DModel`` (16-channel latent, 2x2 tokens),
                           ``t5xxl`` alone (conds [B, L, 32], unpadded), real CFG.
``make_zimage_model()`` -> ``ZImage``, ``NextDiT`` with Z-Image's modulation and 32-token padding, ``qwen3`` (conds
                           [B, L, 32]).
``model_config`` is an instance of a class mirroring huggingface_guess's ``model_list`` (Neo's copy): the family is
its class attribute ``unet_config["image_model"]`` (huggingface_guess removes it from the instance's copy).
"""

import zlib

import torch
from neo_overlay import forge_module

from backend.diffusion_engine.chroma import Chroma
from backend.diffusion_engine.flux2 import Flux2
from backend.diffusion_engine.zimage import ZImage
from backend.modules.k_prediction import PredictionFlux
from backend.nn.chroma import IntegratedChromaTransformer2DModel
from backend.nn.flux import IntegratedFlux2Transformer
from backend.nn.llm import TinyQwen3
from backend.nn.lumina import NextDiT
from backend.operations import use_forge_linear_layers
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE

_forge = forge_module("standin_models.py")
make_sd15_model, make_sdxl_model, make_flux_model = _forge.make_sd15_model, _forge.make_sdxl_model, _forge.make_flux_model
IntegratedT5, ToyT5Tokenizer, _clip = _forge.IntegratedT5, _forge.ToyT5Tokenizer, _forge._clip


class ModelConfig:
    """huggingface_guess ``model_list.BASE`` (subset): the matched class's ``huggingface_repo`` and ``unet_config``."""

    huggingface_repo = None
    unet_config: dict = {}

    def __init__(self):
        self.unet_config = {k: v for k, v in type(self).unet_config.items() if k != "image_model"}

    def inpaint_model(self):
        return False


class Flux2K4B(ModelConfig):
    huggingface_repo = "black-forest-labs/FLUX.2-klein-4B"
    unet_config = {"image_model": "flux2", "hidden_size": 3072}


class ChromaConfig(ModelConfig):
    huggingface_repo = "Chroma"
    unet_config = {"image_model": "chroma"}


class ZImageConfig(ModelConfig):
    huggingface_repo = "Tongyi-MAI/Z-Image-Turbo"
    unet_config = {"image_model": "lumina2", "dim": 3840}


class ToyLlmTokenizer:
    """Chat-templated word ids (crc32), unpadded: ``<|im_start|>user\\n{prompt}<|im_end|>``-like."""

    def __init__(self, vocab=1000):
        self.vocab = vocab

    def batch(self, texts):
        ids = [[1, 2] + [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in t.split()] + [2] for t in texts]
        length = max(len(i) for i in ids)
        return torch.tensor([i + [0] * (length - len(i)) for i in ids])


def _unet(dit):
    dit = dit.eval()
    use_forge_linear_layers(dit)
    return UnetPatcher.from_model(dit, config={}, k_predictor=PredictionFlux())


def make_flux2_model(name="standin-flux2-klein", seed=0):
    torch.manual_seed(seed)
    unet = _unet(IntegratedFlux2Transformer(in_channels=32, context_dim=96, hidden=32, heads=2))
    clip = _clip({"qwen3": TinyQwen3(seed=seed)}, {"qwen3": ToyLlmTokenizer()})
    return Flux2(Flux2K4B(), unet, clip, VAE(latent_channels=32), name=name)


def make_chroma_model(name="standin-chroma", seed=0):
    torch.manual_seed(seed)
    unet = _unet(IntegratedChromaTransformer2DModel(in_channels=16, context_dim=32, hidden=32, heads=2))
    clip = _clip({"t5xxl": IntegratedT5(seed=seed + 2)}, {"t5xxl": ToyT5Tokenizer(min_length=1)})
    return Chroma(ChromaConfig(), unet, clip, VAE(latent_channels=16), name=name)


def make_zimage_model(name="standin-z-image", seed=0):
    torch.manual_seed(seed)
    unet = _unet(NextDiT(in_channels=16, dim=32, n_heads=2, n_kv_heads=2, cap_feat_dim=32, z_image=True,
                         pad_tokens_multiple=32))
    clip = _clip({"qwen3": TinyQwen3(seed=seed)}, {"qwen3": ToyLlmTokenizer()})
    return ZImage(ZImageConfig(), unet, clip, VAE(latent_channels=16), name=name)
