"""Stand-in model objects shaped like A1111 v1.10.1's loaded checkpoints, built from tests/tiny_models.py.

``make_sd15_model()`` ~ ldm ``LatentDiffusion`` after ``sd_hijack``:
  .model (DiffusionWrapper, conditioning_key "crossattn") .model.diffusion_model (ldm_view of a tiny SD1.5 UNet)
  .cond_stage_model.wrapped.transformer (tiny CLIPTextModel, hidden 32) / .wrapped.tokenizer (toy)
  .get_learned_conditioning(texts) -> [B, 77*k, 32] (k = 75-token chunks, like A1111's chunking)
  .apply_model(x, t, cond) dispatching cond["c_crossattn"] like ldm; .alphas_cumprod; .parameterization "eps"
``make_sdxl_model()`` ~ sgm ``DiffusionEngine`` after ``extend_sdxl``:
  .model (OpenAIWrapper-like) .model.diffusion_model (ldm_view of a tiny SDXL UNet, context 64, y 80)
  .conditioner.embedders[0].wrapped.transformer (tiny CLIP, "hidden" layer) and [1].wrapped.model
  (tiny open_clip text tower + token/positional embedding, text_projection; penultimate layer + pooled)
  .get_learned_conditioning(batch) -> {"crossattn": [B, 77*k, 64], "vector": [B, 80]} (pooled 32 + 3 size
  pairs x 2 x 8-dim sinusoidal); an all-empty negative batch gets zeroed text embeddings, as in sgm.
The toy tokenizer hashes lower-cased words into the 1000-token vocab (BOS 0, EOS/pad 2).
"""

from __future__ import annotations

import math
import os
import sys
import types
import zlib

import torch
from torch import nn

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from tiny_models import ldm_view, tiny_clip_text, tiny_open_clip_text, tiny_sd15_unet, tiny_sdxl_unet  # noqa: E402

BOS, EOS, VOCAB, CHUNK = 0, 2, 1000, 75


class ToyTokenizer:
    """Words -> ids by crc32; ``chunks(text)`` -> list of 77-id chunks [BOS, 75 ids (EOS-padded), EOS]."""

    def encode(self, text):
        return [3 + zlib.crc32(w.encode()) % (VOCAB - 3) for w in text.lower().replace(",", " , ").split()]

    def chunks(self, text, n_chunks=None):
        ids = self.encode(text)
        n = max(1, math.ceil(len(ids) / CHUNK))
        n = max(n, n_chunks or 0)
        out = []
        for i in range(n):
            part = ids[i * CHUNK:(i + 1) * CHUNK]
            out.append([BOS] + part + [EOS] * (CHUNK - len(part)) + [EOS])
        return out

    def batch(self, texts):
        """-> LongTensor [B, k, 77], every prompt padded to the batch's largest chunk count."""
        k = max(len(self.chunks(t)) for t in texts)
        return torch.tensor([self.chunks(t, k) for t in texts], dtype=torch.long)


def _alphas_cumprod(n=1000, start=0.00085, end=0.012):
    betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def _checkpoint_info(name):
    return types.SimpleNamespace(filename=f"/models/Stable-diffusion/{name}.safetensors", title=f"{name}.safetensors [0000000000]",
                                 short_title=f"{name} [0000000000]", name=f"{name}.safetensors", name_for_extra=name,
                                 model_name=name, hash="00000000", sha256="0" * 64, shorthash="0000000000")


def _set_model_facts(model: nn.Module, name: str, model_type: str) -> None:
    """The attributes A1111 sets on every loaded model (sd_models.set_model_type, load_model)."""
    model.register_buffer("alphas_cumprod", _alphas_cumprod())
    model.parameterization = "eps"
    model.cond_stage_key = "txt"
    model.is_sd1, model.is_sdxl = model_type == "SD1", model_type == "SDXL"
    model.is_sd2 = model.is_ssd = model.is_sd3 = False
    model.is_sdxl_inpaint = False
    model.model_type = model_type
    model.latent_channels = 4
    model.sd_checkpoint_info = _checkpoint_info(name)
    model.sd_model_hash = model.sd_checkpoint_info.shorthash
    model.sd_model_checkpoint = model.sd_checkpoint_info.filename
    model.lowvram = False


class DiffusionWrapper(nn.Module):
    """ldm DiffusionWrapper: ``forward(x, t, c_concat=None, c_crossattn=None, c_adm=None)``."""

    def __init__(self, diffusion_model, conditioning_key="crossattn"):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        if self.conditioning_key == "crossattn":
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))
        if self.conditioning_key == "hybrid":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t, context=torch.cat(c_crossattn, 1))
        if self.conditioning_key == "crossattn-adm":
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1), y=c_adm)
        raise NotImplementedError(self.conditioning_key)


class FrozenCLIPEmbedderStandin(nn.Module):
    """``FrozenCLIPEmbedderWithCustomWords`` shape: ``.wrapped.transformer`` / ``.wrapped.tokenizer``."""

    def __init__(self, layer="last", seed=0):
        super().__init__()
        self.wrapped = nn.Module()
        self.wrapped.transformer = tiny_clip_text(hidden=32, seed=seed)
        self.wrapped.tokenizer = ToyTokenizer()
        self.layer = layer

    def encode_chunks(self, tokens):
        """tokens [B, k, 77] -> [B, 77*k, C] (chunks encoded separately, concatenated like A1111)."""
        outs = []
        for i in range(tokens.shape[1]):
            o = self.wrapped.transformer(input_ids=tokens[:, i], output_hidden_states=self.layer == "hidden")
            outs.append(o.hidden_states[-2] if self.layer == "hidden" else o.last_hidden_state)
        return torch.cat(outs, dim=1)

    def forward(self, texts):
        return self.encode_chunks(self.wrapped.tokenizer.batch(list(texts)))


class StandinLatentDiffusion(nn.Module):
    """SD1.5-like ``shared.sd_model``."""

    def __init__(self, name="standin-sd15", seed=0):
        super().__init__()
        self.model = DiffusionWrapper(ldm_view(tiny_sd15_unet(seed=seed)), "crossattn")
        self.cond_stage_model = FrozenCLIPEmbedderStandin(seed=seed)
        _set_model_facts(self, name, "SD1")
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        if not isinstance(cond, dict):
            cond = {"c_concat" if self.model.conditioning_key == "concat" else "c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    def decode_first_stage(self, z):
        """Toy VAE: first 3 latent channels -> [-1, 1], upscaled x8 like the real VAE's size."""
        return torch.nn.functional.interpolate(torch.tanh(z[:, :3].float()), scale_factor=8, mode="nearest")


class FrozenOpenCLIPEmbedder2Standin(nn.Module):
    """sgm ``FrozenOpenCLIPEmbedder2`` shape: ``.wrapped.model.transformer.resblocks[i]`` etc."""

    def __init__(self, seed=0):
        super().__init__()
        self.wrapped = tiny_open_clip_text(width=32, seed=seed + 1)
        m = self.wrapped.model
        g = torch.Generator().manual_seed(seed + 2)
        m.token_embedding = nn.Embedding(VOCAB, 32)
        nn.init.normal_(m.token_embedding.weight, std=0.02, generator=g)
        m.positional_embedding = nn.Parameter(torch.randn(77, 32, generator=g) * 0.01)
        m.text_projection = nn.Parameter(torch.randn(32, 32, generator=g) / math.sqrt(32))
        self.wrapped.tokenizer = ToyTokenizer()
        self.input_key = "txt"

    def encode_chunk(self, ids):
        m = self.wrapped.model
        x = (m.token_embedding(ids) + m.positional_embedding).permute(1, 0, 2)  # [T, B, C], batch_first=False
        mask = torch.full((77, 77), float("-inf")).triu_(1)
        penultimate = None
        for i, block in enumerate(m.transformer.resblocks):
            if i == len(m.transformer.resblocks) - 1:
                penultimate = x
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        x = m.ln_final(x).permute(1, 0, 2)
        eot = (ids == EOS).int().argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0]), eot] @ m.text_projection
        return penultimate.permute(1, 0, 2), pooled

    def forward(self, tokens):
        hidden, pooled = zip(*(self.encode_chunk(tokens[:, i]) for i in range(tokens.shape[1])))
        return torch.cat(hidden, dim=1), pooled[0]


def _timestep_embedding(values, dim=8):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = values.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).flatten(-2)


class GeneralConditionerStandin(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        self.embedders = nn.ModuleList([FrozenCLIPEmbedderStandin(layer="hidden", seed=seed), FrozenOpenCLIPEmbedder2Standin(seed)])
        self.embedders[0].input_key = "txt"
        self.wrapped = nn.Module()

    def forward(self, batch, force_zero_embeddings=None):
        force_zero = "txt" in (force_zero_embeddings or [])
        texts = list(batch["txt"])
        tokens = self.embedders[0].wrapped.tokenizer.batch(texts)
        clip_l = self.embedders[0].encode_chunks(tokens)
        clip_g, pooled = self.embedders[1](tokens)
        if force_zero:
            clip_l, clip_g, pooled = torch.zeros_like(clip_l), torch.zeros_like(clip_g), torch.zeros_like(pooled)
        sizes = [batch["original_size_as_tuple"], batch["crop_coords_top_left"], batch["target_size_as_tuple"]]
        emb = torch.cat([_timestep_embedding(torch.tensor(s, dtype=torch.float32)) for s in sizes])  # [48]
        vector = torch.cat([pooled, emb.expand(len(texts), -1)], dim=1)
        return {"crossattn": torch.cat([clip_l, clip_g], dim=2), "vector": vector}


class OpenAIWrapperStandin(nn.Module):
    """sgm OpenAIWrapper: ``forward(x, t, c)`` -> ``diffusion_model(x, timesteps=t, context=c["crossattn"], y=c["vector"])``."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c, **kwargs):
        x = torch.cat((x, *c.get("concat", [])), dim=1)
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn", None), y=c.get("vector", None), **kwargs)


class StandinDiffusionEngine(nn.Module):
    """SDXL-like ``shared.sd_model``."""

    def __init__(self, name="standin-sdxl", seed=0):
        super().__init__()
        self.model = OpenAIWrapperStandin(ldm_view(tiny_sdxl_unet(seed=seed)))
        self.conditioner = GeneralConditionerStandin(seed)
        self.cond_stage_model = self.conditioner
        _set_model_facts(self, name, "SDXL")
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])["crossattn"]

    def get_learned_conditioning(self, batch):
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        is_negative_prompt = getattr(batch, "is_negative_prompt", False)
        conds = {"txt": batch, "original_size_as_tuple": [height, width], "crop_coords_top_left": [0, 0],
                 "target_size_as_tuple": [height, width]}
        force_zero = is_negative_prompt and all(x == "" for x in batch)
        return self.conditioner(conds, force_zero_embeddings=["txt"] if force_zero else [])

    def apply_model(self, x, t, cond):
        if self.is_sdxl_inpaint:
            x = torch.cat([x] + cond["c_concat"], dim=1)
        return self.model(x, t, cond)

    def decode_first_stage(self, z):
        return torch.nn.functional.interpolate(torch.tanh(z[:, :3].float()), scale_factor=8, mode="nearest")


def checkpoint_file(name, weights):
    """A checkpoint to load (its CheckpointInfo, with the weights it holds): for a refiner of the loaded
    model's architecture, which A1111 loads into the loaded model object."""
    info = _checkpoint_info(name)
    info.weights = weights
    return info


def make_sd15_model(name="standin-sd15", seed=0):
    return StandinLatentDiffusion(name, seed).eval()


def make_sdxl_model(name="standin-sdxl", seed=0):
    return StandinDiffusionEngine(name, seed).eval()
