"""Stand-in checkpoints (tests only): ComfyUI's (MODEL, CLIP, VAE) triple from tests/tiny_models.py.

``load_checkpoint(name)`` -> (ModelPatcher, CLIP, ToyVae) for "standin-sd15", "standin-sdxl", "standin-flux",
"standin-flux2", "standin-chroma", "standin-z-image", "standin-lumina2", "standin-qwen-image", "standin-sd3",
"standin-wan" (the file name's stem), built once per process and name:
- SD1.5: ``BaseModel`` (eps) around ``UNetModel``, an ldm-named view of ``tiny_sd15_unet`` (context 32), and a tiny
  real CLIP (``clip_l``) as its text encoder;
- SDXL: ``SDXL`` around the view of ``tiny_sdxl_unet`` (context 64, y = pooled 32 + 48 size features);
- Flux: ``Flux`` (flow) around ``FluxModel``, a ``TinyBflFlux`` with BFL names, 16 latent channels packed 2x2
  into tokens (text 32 wide, 256 T5 tokens, pooled 32).
- Flux.2 (Klein): ``Flux2`` around ``tests/tiny_dits.TinyFlux2`` (32-channel latent, a token per latent pixel);
- Chroma: ``Chroma`` around ``TinyChroma`` (16 channels, 2x2 tokens, real CFG);
- Z-Image and Lumina 2: ``Lumina2`` around ``TinyNextDiT`` (Z-Image's modulation and 32-token padding; Lumina 2's
  grouped-query attention), 16 channels; Z-Image's text encoder a tiny real Qwen3 (``qwen3_4b``);
- Qwen-Image: ``QwenImage`` around ``TinyQwenImage`` (a one-frame 5-D latent); SD3: ``SD3`` around ``TinyMMDiT``
  (two joint blocks, the last context block pre-only, SD3.5 Medium's second attention in the first); Wan: ``WAN21``
  around ``TinyWan`` (5-D latents of several frames).
The networks accept ComfyUI's call ``diffusion_model(x, t, context=, control=, transformer_options=, **conds)``
and record the last ``transformer_options`` they got (``last_transformer_options``).
"""

from __future__ import annotations

import os
import sys
import zlib

import torch
import torch.nn.functional as F
from comfy.model_base import SD3, SDXL, WAN21, BaseModel, Chroma, Flux, Flux2, Lumina2, ModelSamplingFlux, QwenImage
from comfy.model_patcher import ModelPatcher
from comfy.sd import CLIP

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from tiny_dits import TinyChroma, TinyFlux2, TinyMMDiT, TinyNextDiT, TinyQwenImage, TinyWan  # noqa: E402
from tiny_models import LdmUNetView, TinyBflFlux, ldm_view, tiny_clip_text, tiny_sd15_unet, tiny_sdxl_unet  # noqa: E402

#: the transformer families' stand-ins: (model class, network builder, text width, latent channels)
TRANSFORMERS = {
    "standin-flux2": (Flux2, lambda: TinyFlux2(in_channels=32, context_dim=32), 32, 32),
    "standin-chroma": (Chroma, lambda: TinyChroma(in_channels=16, context_dim=32), 32, 16),
    "standin-z-image": (Lumina2, lambda: TinyNextDiT(in_channels=16, dim=32, n_heads=2, n_kv_heads=2, z_image=True,
                                                     pad_tokens_multiple=32), 32, 16),
    "standin-lumina2": (Lumina2, lambda: TinyNextDiT(in_channels=16, dim=32, n_heads=4, n_kv_heads=2), 32, 16),
    "standin-qwen-image": (QwenImage, TinyQwenImage, 32, 16),
    "standin-sd3": (SD3, TinyMMDiT, 32, 16),
    "standin-wan": (WAN21, TinyWan, 32, 16),
}


class UNetModel(LdmUNetView):
    """The ldm-named UNet as ComfyUI calls it (``comfy/ldm/modules/diffusionmodules/openaimodel.py``)."""

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        self.last_transformer_options = transformer_options
        return super().forward(x, timesteps, context, y)


class FluxModel(TinyBflFlux):
    """``comfy/ldm/flux/model.py`` Flux's call: pad to even, pack 2x2 latent pixels into tokens, unpack."""

    def forward(self, x, timestep, context, y=None, guidance=None, control=None, transformer_options=None, **kwargs):
        self.last_transformer_options = transformer_options
        b, c, h, w = x.shape
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="circular")
        hh, ww = x.shape[2] // 2, x.shape[3] // 2
        img = x.reshape(b, c, hh, 2, ww, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, hh * ww, c * 4)
        out = super().forward(img, context, timestep, y, guidance)
        out = out.reshape(b, hh, ww, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh * 2, ww * 2)
        return out[:, :, :h, :w]


def toy_clip(width: int, tokens: int = 77, pooled: int = 32) -> CLIP:
    """A CLIP without networks: text -> ([1, tokens, width] conditioning, [1, pooled] vector), seeded by the words."""
    def encode(_, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        return torch.randn(1, tokens, width, generator=g) * 0.5, torch.randn(1, pooled, generator=g) * 0.5
    return CLIP(tokenizer=lambda text: text, encode=encode)


def _word_ids(text: str, vocab: int = 1000) -> list[int]:
    return [3 + zlib.crc32(w.encode()) % (vocab - 3) for w in text.split()]


def sd1_clip(seed: int = 0) -> CLIP:
    """SD1.5's CLIP: ``clip_l.transformer`` a tiny transformers CLIPTextModel (hidden 32), 77 tokens (BOS 1, words,
    EOS 2, padded with EOS), pooled at the first EOS."""
    encoders = torch.nn.Module()
    encoders.clip_l = torch.nn.Module()
    encoders.clip_l.transformer = tiny_clip_text(hidden=32, seed=seed)

    def tokenize(text: str) -> torch.Tensor:
        ids = ([1] + _word_ids(text) + [2])[:77]
        return torch.tensor([ids + [2] * (77 - len(ids))])

    def encode(model, ids):
        out = model.clip_l.transformer(input_ids=ids)
        eos = (ids == 2).int().argmax(dim=-1)
        return out.last_hidden_state, out.last_hidden_state[torch.arange(ids.shape[0]), eos]

    return CLIP(encoders, tokenize, encode)


def qwen3_clip(seed: int = 0) -> CLIP:
    """Z-Image's text encoder: ``qwen3_4b.transformer.model`` a tiny transformers Qwen3Model (hidden 32), the
    second-to-last hidden state of the unpadded, templated prompt."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    encoders = torch.nn.Module()
    encoders.qwen3_4b = torch.nn.Module()
    encoders.qwen3_4b.transformer = torch.nn.Module()
    encoders.qwen3_4b.transformer.model = Qwen3Model(Qwen3Config(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8)).eval()

    def encode(model, ids):
        states = model.qwen3_4b.transformer.model(input_ids=ids, output_hidden_states=True).hidden_states
        return states[-2], None

    return CLIP(encoders, lambda text: torch.tensor([[1, 2] + _word_ids(text) + [2]]), encode)


class ToyVae:
    """Latent [B, C, h, w] -> IMAGE [B, 8h, 8w, 3] in 0..1 (first three channels, tanh, nearest x8), and back; a
    video latent [B, C, T, h, w] -> its frames [B * T, 8h, 8w, 3] (one picture per latent frame)."""

    def __init__(self, latent_channels: int) -> None:
        self.latent_channels = latent_channels

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        if samples.dim() == 5:
            samples = samples.movedim(2, 1).flatten(0, 1)
        rgb = (torch.tanh(samples[:, :3]) + 1) / 2
        return F.interpolate(rgb, scale_factor=8, mode="nearest").permute(0, 2, 3, 1).contiguous()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, 3] -> latent [B, C, H/8, W/8]: decode's inverse on the first three channels (8x8 means),
        zeros in the others."""
        rgb = F.avg_pool2d(pixels[..., :3].permute(0, 3, 1, 2).float(), 8).clamp(1e-3, 1 - 1e-3)
        rest = torch.zeros(rgb.shape[0], self.latent_channels - 3, *rgb.shape[2:])
        return torch.cat([torch.atanh(rgb * 2 - 1), rest], dim=1)


def _unet(diffusers_unet) -> UNetModel:
    view = ldm_view(diffusers_unet)
    view.__class__ = UNetModel
    return view


def _build(name: str):
    cpu = torch.device("cpu")
    if name == "standin-sd15":
        model, clip, channels = BaseModel(_unet(tiny_sd15_unet(seed=0))), sd1_clip(), 4
    elif name == "standin-sdxl":
        model, clip, channels = SDXL(_unet(tiny_sdxl_unet(seed=0))), toy_clip(64), 4
    elif name == "standin-flux":
        torch.manual_seed(0)
        dit = FluxModel(in_channels=64, vec_dim=32, context_dim=32, hidden=32, heads=2).eval()
        model, clip, channels = Flux(dit, ModelSamplingFlux()), toy_clip(32, tokens=256), 16
    elif name in TRANSFORMERS:
        model_class, build, width, channels = TRANSFORMERS[name]
        torch.manual_seed(0)
        clip = qwen3_clip() if name == "standin-z-image" else toy_clip(width, tokens=24)
        model = model_class(build().eval(), ModelSamplingFlux())
    else:
        raise FileNotFoundError(f"no stand-in checkpoint '{name}'")
    return ModelPatcher(model.eval(), cpu, cpu), clip, ToyVae(channels)


_BUILT: dict = {}


def load_checkpoint(ckpt_name: str):
    name = os.path.splitext(os.path.basename(ckpt_name))[0]
    if name not in _BUILT:
        _BUILT[name] = _build(name)
    return _BUILT[name]


def latent_dimensions(patcher) -> int:
    """2 for images, 3 for the video-latent models (``latent_format.latent_dimensions`` in ComfyUI)."""
    return getattr(patcher.model, "latent_dimensions", 2)


def latent_channels(patcher) -> int:
    for model_class, _, _, channels in TRANSFORMERS.values():
        if type(patcher.model) is model_class:
            return channels
    return 16 if isinstance(patcher.model, Flux) else 4
