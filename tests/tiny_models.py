"""Tiny networks with the real module names of SD1.5 / SDXL / CLIP / Flux / T5, for tests (no downloads).

``ldm_view`` re-exposes a diffusers UNet's leaf modules under the ldm/CompVis names that
AUTOMATIC1111 and Forge use, so the same weights can be reached under both conventions.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SDXL_TIME_IDS = 6  # original size, crop offset, target size: 2 numbers each


def tiny_sd15_unet(seed: int = 0, layers_per_block: int = 1):
    """SD1.5-shaped diffusers UNet: cross-attention at both levels, conv ``proj_in``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_sdxl_unet(seed: int = 0):
    """SDXL-shaped diffusers UNet: first level without attention, linear projections,
    two transformer layers at the last level, "text_time" added conditioning."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    time_dim, pooled_dim = 8, 32
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=64, attention_head_dim=(4, 8),
        norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled_dim + SDXL_TIME_IDS * time_dim,
    ).eval()


class TimestepEmbedSequential(nn.Sequential):
    """Container with the class name ldm uses for input/middle/output blocks (names only)."""


class ResBlock(nn.Module):
    """ldm ResBlock naming over a diffusers ResnetBlock2D's own leaf modules."""

    def __init__(self, r: nn.Module) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(r.norm1, nn.SiLU(), r.conv1)
        self.emb_layers = nn.Sequential(nn.SiLU(), r.time_emb_proj)
        self.out_layers = nn.Sequential(r.norm2, nn.SiLU(), r.dropout, r.conv2)
        self.skip_connection = r.conv_shortcut if r.conv_shortcut is not None else nn.Identity()


class Downsample(nn.Module):
    def __init__(self, d: nn.Module) -> None:
        super().__init__()
        self.op = d.conv


class Upsample(nn.Module):
    def __init__(self, u: nn.Module) -> None:
        super().__init__()
        self.conv = u.conv


class LdmUNetView(nn.Module):
    """A diffusers UNet seen through ldm/CompVis (A1111 ``diffusion_model``) names."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "unet", unet)  # not registered: only ldm names are visible
        te = unet.time_embedding
        self.time_embed = nn.Sequential(te.linear_1, nn.SiLU(), te.linear_2)
        if getattr(unet, "add_embedding", None) is not None:
            ae = unet.add_embedding
            self.label_emb = nn.Sequential(nn.Sequential(ae.linear_1, nn.SiLU(), ae.linear_2))
        inputs = [TimestepEmbedSequential(unet.conv_in)]
        for block in unet.down_blocks:
            attns = getattr(block, "attentions", None)
            for j, res in enumerate(block.resnets):
                parts = [ResBlock(res)] + ([attns[j]] if attns is not None else [])
                inputs.append(TimestepEmbedSequential(*parts))
            if block.downsamplers is not None:
                inputs.append(TimestepEmbedSequential(Downsample(block.downsamplers[0])))
        self.input_blocks = nn.ModuleList(inputs)
        mid = unet.mid_block
        self.middle_block = TimestepEmbedSequential(ResBlock(mid.resnets[0]), mid.attentions[0],
                                                    ResBlock(mid.resnets[1]))
        outputs = []
        for block in unet.up_blocks:
            attns = getattr(block, "attentions", None)
            for j, res in enumerate(block.resnets):
                parts = [ResBlock(res)] + ([attns[j]] if attns is not None else [])
                if j == len(block.resnets) - 1 and block.upsamplers is not None:
                    parts.append(Upsample(block.upsamplers[0]))
                outputs.append(TimestepEmbedSequential(*parts))
        self.output_blocks = nn.ModuleList(outputs)
        self.out = nn.Sequential(unet.conv_norm_out, nn.SiLU(), unet.conv_out)

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Optional[Tensor] = None,
                added_cond_kwargs: Optional[dict] = None) -> Tensor:
        unet = self.unet
        handle = None
        if y is not None:
            # ldm feeds y straight into label_emb; diffusers assembles that vector from pooled
            # text embeddings and embedded time ids. Substitute y for the assembled vector.
            handle = unet.add_embedding.register_forward_pre_hook(lambda m, args: (y.to(args[0].dtype),))
            cfg = unet.config
            pooled = cfg.projection_class_embeddings_input_dim - SDXL_TIME_IDS * cfg.addition_time_embed_dim
            added_cond_kwargs = {"text_embeds": y.new_zeros(y.shape[0], pooled),
                                 "time_ids": y.new_zeros(y.shape[0], SDXL_TIME_IDS)}
        try:
            return unet(x, timesteps, encoder_hidden_states=context,
                        added_cond_kwargs=added_cond_kwargs).sample
        finally:
            if handle is not None:
                handle.remove()


def ldm_view(unet: nn.Module) -> LdmUNetView:
    return LdmUNetView(unet)


def tiny_clip_text(hidden: int = 32, layers: int = 2, seed: int = 0):
    """transformers CLIPTextModel: ``text_model.encoder.layers.N.self_attn.q_proj`` with
    transformers 4 (A1111), ``encoder.layers.N...`` with transformers 5."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4,
                         max_position_embeddings=77, projection_dim=hidden,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPTextModel(cfg).eval()


class _OpenClipBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 2 * width), gelu=nn.GELU(), c_proj=nn.Linear(2 * width, width)))


def tiny_open_clip_text(width: int = 32, layers: int = 2, seed: int = 0) -> nn.Module:
    """open_clip text-transformer names as in A1111's SDXL ``te2`` (``model.transformer.resblocks``);
    weights only, no forward."""
    torch.manual_seed(seed)
    model = nn.Module()
    model.transformer = nn.Module()
    model.transformer.resblocks = nn.ModuleList(_OpenClipBlock(width) for _ in range(layers))
    model.ln_final = nn.LayerNorm(width)
    wrapper = nn.Module()
    wrapper.model = model
    return wrapper


def _timestep_embedding(t: Tensor, dim: int = 256) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _mlp_embedder(in_dim: int, hidden: int) -> nn.Module:
    m = nn.Module()
    m.in_layer, m.out_layer = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)
    return m


def _embed(m: nn.Module, x: Tensor) -> Tensor:
    return m.out_layer(F.silu(m.in_layer(x)))


def _modulation(hidden: int, n: int) -> nn.Module:
    m = nn.Module()
    m.lin = nn.Linear(hidden, n * hidden)
    return m


def _attention_linears(hidden: int) -> nn.Module:
    m = nn.Module()
    m.qkv, m.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
    return m


def _mlp(hidden: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden))


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    split = [t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2)


class TinyBflFlux(nn.Module):
    """A Flux transformer with BFL (Forge) module names from plain ``nn.Linear`` layers.

    The forward follows Flux's structure (modulation, fused qkv, joint attention, single blocks
    with fused ``linear1``, final (shift, scale) modulation) without RoPE or QK norms: enough
    for every Linear to run and for LoRA placement errors to show in the output.
    """

    def __init__(self, in_channels: int = 8, vec_dim: int = 20, context_dim: int = 24, hidden: int = 32,
                 mlp_ratio: int = 4, heads: int = 2, depth: int = 1, depth_single: int = 1) -> None:
        super().__init__()
        self.hidden, self.heads, self.mlp_width = hidden, heads, mlp_ratio * hidden
        self.img_in, self.txt_in = nn.Linear(in_channels, hidden), nn.Linear(context_dim, hidden)
        self.time_in, self.vector_in = _mlp_embedder(256, hidden), _mlp_embedder(vec_dim, hidden)
        self.guidance_in = _mlp_embedder(256, hidden)
        self.double_blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.img_mod, b.txt_mod = _modulation(hidden, 6), _modulation(hidden, 6)
            b.img_attn, b.txt_attn = _attention_linears(hidden), _attention_linears(hidden)
            b.img_mlp, b.txt_mlp = _mlp(hidden, self.mlp_width), _mlp(hidden, self.mlp_width)
            self.double_blocks.append(b)
        self.single_blocks = nn.ModuleList()
        for _ in range(depth_single):
            b = nn.Module()
            b.modulation = _modulation(hidden, 3)
            b.linear1 = nn.Linear(hidden, 3 * hidden + self.mlp_width)
            b.linear2 = nn.Linear(hidden + self.mlp_width, hidden)
            self.single_blocks.append(b)
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(hidden, in_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def _norm(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return (1 + scale) * F.layer_norm(x, (self.hidden,)) + shift

    def _double(self, b: nn.Module, img: Tensor, txt: Tensor, vec: Tensor) -> tuple[Tensor, Tensor]:
        im = b.img_mod.lin(F.silu(vec))[:, None].chunk(6, -1)
        tm = b.txt_mod.lin(F.silu(vec))[:, None].chunk(6, -1)
        iq, ik, iv = b.img_attn.qkv(self._norm(img, im[0], im[1])).chunk(3, -1)
        tq, tk, tv = b.txt_attn.qkv(self._norm(txt, tm[0], tm[1])).chunk(3, -1)
        out = _attend(torch.cat([tq, iq], 1), torch.cat([tk, ik], 1), torch.cat([tv, iv], 1), self.heads)
        t_out, i_out = out[:, :txt.shape[1]], out[:, txt.shape[1]:]
        img = img + im[2] * b.img_attn.proj(i_out)
        img = img + im[5] * b.img_mlp(self._norm(img, im[3], im[4]))
        txt = txt + tm[2] * b.txt_attn.proj(t_out)
        txt = txt + tm[5] * b.txt_mlp(self._norm(txt, tm[3], tm[4]))
        return img, txt

    def _single(self, b: nn.Module, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale, gate = b.modulation.lin(F.silu(vec))[:, None].chunk(3, -1)
        qkv, mlp = b.linear1(self._norm(x, shift, scale)).split([3 * self.hidden, self.mlp_width], -1)
        out = _attend(*qkv.chunk(3, -1), self.heads)
        return x + gate * b.linear2(torch.cat([out, F.gelu(mlp, approximate="tanh")], -1))

    def forward(self, img: Tensor, txt: Tensor, timesteps: Tensor, y: Tensor, guidance: Tensor) -> Tensor:
        img, txt = self.img_in(img), self.txt_in(txt)
        vec = _embed(self.time_in, _timestep_embedding(timesteps)) + _embed(self.vector_in, y)
        vec = vec + _embed(self.guidance_in, _timestep_embedding(guidance))
        for b in self.double_blocks:
            img, txt = self._double(b, img, txt, vec)
        x = torch.cat([txt, img], 1)
        for b in self.single_blocks:
            x = self._single(b, x, vec)
        shift, scale = self.final_layer.adaLN_modulation(vec)[:, None].chunk(2, -1)
        return self.final_layer.linear(self._norm(x[:, txt.shape[1]:], shift, scale))


def tiny_bfl_flux(seed: int = 0, **dims: int) -> TinyBflFlux:
    torch.manual_seed(seed)
    return TinyBflFlux(**dims).eval()


def tiny_t5_encoder(d_model: int = 32, layers: int = 2, seed: int = 0) -> nn.Module:
    """transformers T5EncoderModel (gated-GELU, as Flux's T5-XXL): ``encoder.block.N.layer.0.
    SelfAttention.{q,k,v,o}``, ``layer.1.DenseReluDense.{wi_0,wi_1,wo}``, the names Forge's T5 has."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=100, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
                   num_heads=4, feed_forward_proj="gated-gelu")
    return T5EncoderModel(cfg).eval()
