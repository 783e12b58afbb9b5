"""Tiny networks with the real module names of SD1.5 / SDXL / CLIP, for tests (no downloads).

``ldm_view`` re-exposes a diffusers UNet's leaf modules under the ldm/CompVis names that
AUTOMATIC1111 and Forge use, so the same weights can be reached under both conventions.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
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
