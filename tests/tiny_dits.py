"""Tiny diffusion transformers with the module names, call signatures and token layouts of ComfyUI's own model classes
(read at commit 3cd7b32 of January 2026; Forge Neo's ``backend/nn`` classes are ports of them with the same names),
for tests. Random weights, reduced depth and width; the maths is simplified (no RoPE, plain modulation), the layout is
not: each model pads its latent to whole patches, packs patches into tokens row-major, and puts text, image,
reference and padding tokens where the real model does, so LoRAtorio's weight maps meet the sequences they will meet.

- ``TinyFlux2``: ``comfy/ldm/flux/model.py`` ``Flux`` with Flux.2's parameters (``global_modulation``: one modulation
  per stream instead of one per block, SwiGLU MLPs, no ``vector_in``, ``patch_size`` 1 on a packed latent;
  ``guidance_in`` only for Flux.2 dev); single blocks see ``[txt, img, refs]``.
- ``TinyChroma``: ``comfy/ldm/chroma/model.py`` ``Chroma``: Flux's blocks without modulation layers, modulated by the
  ``distilled_guidance_layer`` approximator's [B, 344, hidden] output; 2x2 patches.
- ``TinyNextDiT``: ``comfy/ldm/lumina/model.py`` ``NextDiT`` for Lumina 2 (GQA attention, ``adaLN_modulation.1``)
  and Z-Image (``z_image_modulation``: ``adaLN_modulation.0``; ``pad_tokens_multiple``: caption and image padded with
  learned tokens); ``layers`` and ``final_layer`` see ``[caption (+pad), image (+pad)]``; returns ``-output``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MOD_INDEX_LENGTH = 344  # Chroma's approximator outputs this many modulation vectors (hard-coded in ComfyUI)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, kv_heads: Optional[int] = None) -> Tensor:
    """Attention over [B, L, heads * D] (k/v with ``kv_heads``, repeated as grouped-query attention does)."""
    kv_heads = kv_heads or heads
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2)
    k, v = (t.unflatten(-1, (kv_heads, -1)).transpose(1, 2).repeat_interleave(heads // kv_heads, 1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def pad_to_patch(x: Tensor, patch: int) -> Tensor:
    """``comfy.ldm.common_dit.pad_to_patch_size``: circular padding of the last two axes to whole patches."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % patch, 0, (-h) % patch), mode="circular")


def patchify(x: Tensor, patch: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p] tokens, row-major (einops ``b c (h ph) (w pw) -> b (h w) (c ph pw)``)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * patch ** 2)


def unpatchify(tokens: Tensor, patch: int, c: int, h: int, w: int) -> Tensor:
    b = tokens.shape[0]
    hh, ww = -(-h // patch), -(-w // patch)
    out = tokens.view(b, hh, ww, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh * patch, ww * patch)
    return out[:, :, :h, :w]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, name: str = "scale") -> None:
        super().__init__()
        self.param_name = name
        self.register_parameter(name, nn.Parameter(torch.ones(dim)))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), getattr(self, self.param_name), 1e-6)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class SiLUActivation(nn.Module):
    """Flux.2's SwiGLU: silu(first half) * second half."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


def _attention(hidden: int, bias: bool) -> nn.Module:
    m = nn.Module()
    m.qkv, m.proj = nn.Linear(hidden, 3 * hidden, bias=bias), nn.Linear(hidden, hidden, bias=bias)
    return m


def _mlp(hidden: int, width: int, swiglu: bool, bias: bool) -> nn.Sequential:
    if swiglu:
        return nn.Sequential(nn.Linear(hidden, 2 * width, bias=bias), SiLUActivation(),
                             nn.Linear(width, hidden, bias=bias))
    return nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden))


def _modulation(hidden: int, n: int) -> nn.Module:
    m = nn.Module()
    m.lin = nn.Linear(hidden, n * hidden, bias=False)
    return m


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return (1 + scale) * F.layer_norm(x, (x.shape[-1],)) + shift


class _BflBlocks(nn.Module):
    """Double and single blocks in BFL naming, modulated from outside (Flux.2's global modulations, Chroma's
    approximator): ``double_blocks.N.{img,txt}_attn.{qkv,proj}``, ``{img,txt}_mlp.{0,2}``, ``single_blocks.N.
    {linear1,linear2}``."""

    def __init__(self, hidden: int, heads: int, depth: int, depth_single: int, mlp_ratio: float, swiglu: bool,
                 bias: bool) -> None:
        super().__init__()
        self.hidden, self.heads, self.mlp_width, self.swiglu = hidden, heads, int(hidden * mlp_ratio), swiglu
        self.double_blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.img_attn, b.txt_attn = _attention(hidden, bias), _attention(hidden, bias)
            b.img_mlp = _mlp(hidden, self.mlp_width, swiglu, bias)
            b.txt_mlp = _mlp(hidden, self.mlp_width, swiglu, bias)
            self.double_blocks.append(b)
        first = (2 if swiglu else 1) * self.mlp_width
        self.single_blocks = nn.ModuleList()
        for _ in range(depth_single):
            b = nn.Module()
            b.linear1 = nn.Linear(hidden, 3 * hidden + first, bias=bias)
            b.linear2 = nn.Linear(hidden + self.mlp_width, hidden, bias=bias)
            self.single_blocks.append(b)

    def double(self, b: nn.Module, img: Tensor, txt: Tensor, im: list[Tensor],
               tm: list[Tensor]) -> tuple[Tensor, Tensor]:
        iq, ik, iv = b.img_attn.qkv(_modulate(img, im[0], im[1])).chunk(3, -1)
        tq, tk, tv = b.txt_attn.qkv(_modulate(txt, tm[0], tm[1])).chunk(3, -1)
        out = attend(torch.cat([tq, iq], 1), torch.cat([tk, ik], 1), torch.cat([tv, iv], 1), self.heads)
        t_out, i_out = out[:, :txt.shape[1]], out[:, txt.shape[1]:]
        img = img + im[2] * b.img_attn.proj(i_out)
        img = img + im[5] * b.img_mlp(_modulate(img, im[3], im[4]))
        txt = txt + tm[2] * b.txt_attn.proj(t_out)
        txt = txt + tm[5] * b.txt_mlp(_modulate(txt, tm[3], tm[4]))
        return img, txt

    def single(self, b: nn.Module, x: Tensor, mod: list[Tensor]) -> Tensor:
        qkv, mlp = b.linear1(_modulate(x, mod[0], mod[1])).split(
            [3 * self.hidden, b.linear1.weight.shape[0] - 3 * self.hidden], -1)
        out = attend(*qkv.chunk(3, -1), self.heads)
        act = SiLUActivation()(mlp) if self.swiglu else F.gelu(mlp, approximate="tanh")
        return x + mod[2] * b.linear2(torch.cat([out, act], -1))


class TinyFlux2(_BflBlocks):
    """ComfyUI's ``Flux`` built with Flux.2's parameters (Klein: no ``guidance_in``)."""

    def __init__(self, in_channels: int = 32, context_dim: int = 32, hidden: int = 32, heads: int = 2, depth: int = 1,
                 depth_single: int = 1, guidance_embed: bool = False) -> None:
        super().__init__(hidden, heads, depth, depth_single, mlp_ratio=3.0, swiglu=True, bias=False)
        self.patch_size, self.global_modulation, self.in_channels = 1, True, in_channels
        self.img_in = nn.Linear(in_channels, hidden, bias=False)
        self.txt_in = nn.Linear(context_dim, hidden, bias=False)
        self.time_in = MLPEmbedder(256, hidden)
        self.guidance_in = MLPEmbedder(256, hidden) if guidance_embed else None
        self.double_stream_modulation_img = _modulation(hidden, 6)
        self.double_stream_modulation_txt = _modulation(hidden, 6)
        self.single_stream_modulation = _modulation(hidden, 3)
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(hidden, in_channels, bias=False)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, bias=False))

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Optional[Tensor] = None,
                guidance: Optional[Tensor] = None, ref_latents: Optional[list] = None, control=None,
                transformer_options: Optional[dict] = None, **kwargs) -> Tensor:
        b, c, h, w = x.shape
        img = patchify(pad_to_patch(x, 1), 1)
        tokens = img.shape[1]
        for ref in ref_latents or ():  # reference images follow the image's tokens
            img = torch.cat([img, patchify(ref.to(x), 1).expand(b, -1, -1)], 1)
        img, txt = self.img_in(img), self.txt_in(context)
        vec = self.time_in(timestep_embedding(timestep * 1000, 256))
        if self.guidance_in is not None and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance * 1000, 256))
        im = self.double_stream_modulation_img.lin(F.silu(vec))[:, None].chunk(6, -1)
        tm = self.double_stream_modulation_txt.lin(F.silu(vec))[:, None].chunk(6, -1)
        for block in self.double_blocks:
            img, txt = self.double(block, img, txt, im, tm)
        joint = torch.cat([txt, img], 1)
        sm = self.single_stream_modulation.lin(F.silu(vec))[:, None].chunk(3, -1)
        for block in self.single_blocks:
            joint = self.single(block, joint, sm)
        shift, scale = self.final_layer.adaLN_modulation(vec)[:, None].chunk(2, -1)
        out = self.final_layer.linear(_modulate(joint[:, txt.shape[1]:], shift, scale))
        return unpatchify(out[:, :tokens], 1, c, h, w)


class TinyChroma(_BflBlocks):
    """ComfyUI's ``Chroma``: modulation vectors from ``distilled_guidance_layer`` (in_dim 64: timestep 16 + guidance
    16 + modulation index 32), indexed per block as ``Chroma.get_modulations`` does."""

    def __init__(self, in_channels: int = 16, context_dim: int = 32, hidden: int = 32, heads: int = 2, depth: int = 1,
                 depth_single: int = 1, approximator_hidden: int = 32, approximator_layers: int = 1) -> None:
        super().__init__(hidden, heads, depth, depth_single, mlp_ratio=4.0, swiglu=False, bias=True)
        self.patch_size, self.in_channels = 2, in_channels
        self.img_in = nn.Linear(in_channels * 4, hidden)
        self.txt_in = nn.Linear(context_dim, hidden)
        approximator = nn.Module()
        approximator.in_proj = nn.Linear(64, approximator_hidden)
        approximator.layers = nn.ModuleList([MLPEmbedder(approximator_hidden, approximator_hidden)
                                             for _ in range(approximator_layers)])
        approximator.norms = nn.ModuleList([RMSNorm(approximator_hidden) for _ in range(approximator_layers)])
        approximator.out_proj = nn.Linear(approximator_hidden, hidden)
        self.distilled_guidance_layer = approximator
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(hidden, in_channels * 4)

    def _mod_vectors(self, timestep: Tensor, guidance: Tensor) -> Tensor:
        a = self.distilled_guidance_layer
        index = timestep_embedding(torch.arange(MOD_INDEX_LENGTH, device=timestep.device) * 1.0, 32)
        tg = torch.cat([timestep_embedding(timestep, 16), timestep_embedding(guidance, 16)], 1)
        x = a.in_proj(torch.cat([tg[:, None].expand(-1, MOD_INDEX_LENGTH, -1), index.expand(tg.shape[0], -1, -1)], -1))
        for layer, norm in zip(a.layers, a.norms, strict=True):
            x = x + layer(norm(x))
        return a.out_proj(x)                                                  # [B, 344, hidden]

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, guidance: Optional[Tensor] = None, control=None,
                transformer_options: Optional[dict] = None, **kwargs) -> Tensor:
        b, c, h, w = x.shape
        guidance = torch.zeros_like(timestep) if guidance is None else guidance
        mods = self._mod_vectors(timestep, guidance)
        n_single, n_double = len(self.single_blocks), len(self.double_blocks)

        def vectors(offset: int, n: int) -> list[Tensor]:
            return [mods[:, offset + i:offset + i + 1] for i in range(n)]

        img, txt = self.img_in(patchify(pad_to_patch(x, 2), 2)), self.txt_in(context)
        for i, block in enumerate(self.double_blocks):
            im = vectors(3 * n_single + 6 * i, 6)
            tm = vectors(3 * n_single + 6 * n_double + 6 * i, 6)
            img, txt = self.double(block, img, txt, im, tm)
        joint = torch.cat([txt, img], 1)
        for i, block in enumerate(self.single_blocks):
            joint = self.single(block, joint, vectors(3 * i, 3))
        shift, scale = vectors(3 * n_single + 12 * n_double, 2)
        out = self.final_layer.linear(_modulate(joint[:, txt.shape[1]:], shift, scale))
        return unpatchify(out, 2, c, h, w)


class JointTransformerBlock(nn.Module):
    """``attention.{qkv,out,q_norm,k_norm}``, ``feed_forward.w{1,2,3}``, ``attention_norm{1,2}``, ``ffn_norm{1,2}``,
    ``adaLN_modulation`` (Z-Image: [Linear]; Lumina 2: [SiLU, Linear]; none in the context refiner)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, ffn: int, modulation: bool, z_image: bool,
                 mod_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        head = dim // heads
        self.attention = nn.Module()
        self.attention.n_local_heads, self.attention.n_local_kv_heads, self.attention.head_dim = heads, kv_heads, head
        self.attention.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head, bias=False)
        self.attention.out = nn.Linear(heads * head, dim, bias=False)
        self.attention.q_norm, self.attention.k_norm = RMSNorm(head, "weight"), RMSNorm(head, "weight")
        self.feed_forward = nn.Module()
        self.feed_forward.w1 = nn.Linear(dim, ffn, bias=False)
        self.feed_forward.w2 = nn.Linear(ffn, dim, bias=False)
        self.feed_forward.w3 = nn.Linear(dim, ffn, bias=False)
        for name in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
            setattr(self, name, RMSNorm(dim, "weight"))
        self.modulation = modulation
        if modulation:
            layers = [nn.Linear(mod_dim, 4 * dim)]
            self.adaLN_modulation = nn.Sequential(*layers) if z_image else nn.Sequential(nn.SiLU(), *layers)

    def _attention(self, x: Tensor) -> Tensor:
        a, head = self.attention, self.attention.q_norm.weight.shape[0]
        q, k, v = a.qkv(x).split([self.heads * head, self.kv_heads * head, self.kv_heads * head], -1)
        q = a.q_norm(q.unflatten(-1, (self.heads, head))).flatten(-2)
        k = a.k_norm(k.unflatten(-1, (self.kv_heads, head))).flatten(-2)
        return a.out(attend(q, k, v, self.heads, self.kv_heads))

    def _ffn(self, x: Tensor) -> Tensor:
        f = self.feed_forward
        return f.w2(F.silu(f.w1(x)) * f.w3(x))

    def forward(self, x: Tensor, adaln_input: Optional[Tensor] = None) -> Tensor:
        if not self.modulation:
            x = x + self.attention_norm2(self._attention(self.attention_norm1(x)))
            return x + self.ffn_norm2(self._ffn(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input)[:, None].chunk(4, -1)
        x = x + gate_msa.tanh() * self.attention_norm2(self._attention(self.attention_norm1(x) * (1 + scale_msa)))
        return x + gate_mlp.tanh() * self.ffn_norm2(self._ffn(self.ffn_norm1(x) * (1 + scale_mlp)))


class TinyNextDiT(nn.Module):
    """ComfyUI's ``NextDiT`` (Lumina 2 with GQA; Z-Image with ``z_image=True`` and ``pad_tokens_multiple``). The
    modulation width is min(dim, 256) for Z-Image and min(dim, 1024) for Lumina 2, as in ComfyUI; at this tiny width
    the timestep embedder's output is that width too (ComfyUI's fixed 256 assumes dim >= 256)."""

    def __init__(self, in_channels: int = 16, dim: int = 32, n_layers: int = 1, n_refiner_layers: int = 1,
                 n_heads: int = 4, n_kv_heads: int = 2, cap_feat_dim: int = 32, ffn: int = 64, z_image: bool = False,
                 pad_tokens_multiple: Optional[int] = None) -> None:
        super().__init__()
        self.patch_size, self.in_channels, self.out_channels = 2, in_channels, in_channels
        self.pad_tokens_multiple = pad_tokens_multiple
        mod_dim = min(dim, 256 if z_image else 1024)
        self.x_embedder = nn.Linear(4 * in_channels, dim)

        def blocks(modulation: bool) -> nn.ModuleList:
            return nn.ModuleList([JointTransformerBlock(dim, n_heads, n_kv_heads, ffn, modulation, z_image, mod_dim)
                                  for _ in range(n_refiner_layers)])

        self.noise_refiner, self.context_refiner = blocks(True), blocks(False)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, mod_dim), nn.SiLU(), nn.Linear(mod_dim, mod_dim))
        self.cap_embedder = nn.Sequential(RMSNorm(cap_feat_dim, "weight"), nn.Linear(cap_feat_dim, dim))
        self.layers = nn.ModuleList([JointTransformerBlock(dim, n_heads, n_kv_heads, ffn, True, z_image, mod_dim)
                                     for _ in range(n_layers)])
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(dim, 4 * in_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, dim))
        if pad_tokens_multiple is not None:
            self.x_pad_token = nn.Parameter(torch.randn(1, dim) * 0.1)
            self.cap_pad_token = nn.Parameter(torch.randn(1, dim) * 0.1)

    def _pad(self, tokens: Tensor, pad_token: Optional[Tensor]) -> Tensor:
        extra = (-tokens.shape[1]) % self.pad_tokens_multiple if self.pad_tokens_multiple else 0
        if not extra:
            return tokens
        return torch.cat([tokens, pad_token.to(tokens)[None].expand(tokens.shape[0], extra, -1)], 1)

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, num_tokens=None, attention_mask=None,
                transformer_options: Optional[dict] = None, **kwargs) -> Tensor:
        b, c, h, w = x.shape
        t = self.t_embedder.mlp(timestep_embedding((1.0 - timesteps) * 1000, 256))
        cap = self._pad(self.cap_embedder(context), getattr(self, "cap_pad_token", None))
        xx = pad_to_patch(x, 2)
        hh, ww = xx.shape[2] // 2, xx.shape[3] // 2
        # ComfyUI packs a token's channels as (ph, pw, c)
        img = self.x_embedder(xx.view(b, c, hh, 2, ww, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, hh * ww, 4 * c))
        img = self._pad(img, getattr(self, "x_pad_token", None))
        for layer in self.context_refiner:
            cap = layer(cap)
        for layer in self.noise_refiner:
            img = layer(img, t)
        joint = torch.cat([cap, img], 1)
        for layer in self.layers:
            joint = layer(joint, t)
        scale = self.final_layer.adaLN_modulation(t)[:, None]
        out = self.final_layer.linear(F.layer_norm(joint, (joint.shape[-1],)) * (1 + scale))
        out = out[:, cap.shape[1]:cap.shape[1] + hh * ww]
        out = out.view(b, hh, ww, 2, 2, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, 2 * hh, 2 * ww)
        return -out[:, :, :h, :w]


def _qwen_ff(dim: int, width: int) -> nn.Module:
    """Qwen-Image's FeedForward: ``net.0.proj`` (GELU tanh), ``net.1`` (dropout), ``net.2``."""
    ff = nn.Module()
    gelu = nn.Module()
    gelu.proj = nn.Linear(dim, width)
    ff.net = nn.ModuleList([gelu, nn.Dropout(0.0), nn.Linear(width, dim)])
    return ff


class TinyQwenImage(nn.Module):
    """ComfyUI's ``QwenImageTransformer2DModel`` (its names are diffusers' names): a 5-D latent [B, C, T, H, W] cut into
    2x2 patches per frame (tokens (t, h, w)), reference latents after them; text and image in two streams that meet
    only inside attention (``attn.to_*`` image, ``attn.add_*_proj`` / ``to_add_out`` text)."""

    def __init__(self, in_channels: int = 16, context_dim: int = 32, dim: int = 32, heads: int = 2,
                 layers: int = 1) -> None:
        super().__init__()
        self.patch_size, self.heads, self.out_channels = 2, heads, in_channels
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = nn.Module()
        self.time_text_embed.timestep_embedder.linear_1 = nn.Linear(256, dim)
        self.time_text_embed.timestep_embedder.linear_2 = nn.Linear(dim, dim)
        self.txt_norm = RMSNorm(context_dim, "weight")
        self.img_in = nn.Linear(4 * in_channels, dim)
        self.txt_in = nn.Linear(context_dim, dim)
        self.transformer_blocks = nn.ModuleList()
        for _ in range(layers):
            b = nn.Module()
            b.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
            b.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
            b.attn = nn.Module()
            for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
                setattr(b.attn, name, nn.Linear(dim, dim))
            b.attn.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
            b.img_mlp, b.txt_mlp = _qwen_ff(dim, 4 * dim), _qwen_ff(dim, 4 * dim)
            self.transformer_blocks.append(b)
        self.norm_out = nn.Module()
        self.norm_out.linear = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, 4 * in_channels)

    @staticmethod
    def _ff(ff: nn.Module, x: Tensor) -> Tensor:
        return ff.net[2](F.gelu(ff.net[0].proj(x), approximate="tanh"))

    def _tokens(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, (-x.shape[-1]) % 2, 0, (-x.shape[-2]) % 2))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 1, 4, 6)
        return x.reshape(b, t * (h // 2) * (w // 2), c * 4)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, attention_mask=None, ref_latents=None,
                transformer_options: Optional[dict] = None, **kwargs) -> Tensor:
        b, c, t, h, w = x.shape
        img = self._tokens(x)
        tokens = img.shape[1]
        for ref in ref_latents or ():
            img = torch.cat([img, self._tokens(ref.to(x)).expand(b, -1, -1)], 1)
        e = self.time_text_embed.timestep_embedder
        temb = e.linear_2(F.silu(e.linear_1(timestep_embedding(timestep * 1000, 256))))
        img, txt = self.img_in(img), self.txt_in(self.txt_norm(context))
        for block in self.transformer_blocks:
            im = block.img_mod(temb)[:, None].chunk(6, -1)
            tm = block.txt_mod(temb)[:, None].chunk(6, -1)
            x_img, x_txt = _modulate(img, im[0], im[1]), _modulate(txt, tm[0], tm[1])
            a = block.attn
            q = torch.cat([a.add_q_proj(x_txt), a.to_q(x_img)], 1)
            k = torch.cat([a.add_k_proj(x_txt), a.to_k(x_img)], 1)
            v = torch.cat([a.add_v_proj(x_txt), a.to_v(x_img)], 1)
            out = attend(q, k, v, self.heads)
            img = img + im[2] * a.to_out[0](out[:, txt.shape[1]:])
            txt = txt + tm[2] * a.to_add_out(out[:, :txt.shape[1]])
            img = img + im[5] * self._ff(block.img_mlp, _modulate(img, im[3], im[4]))
            txt = txt + tm[5] * self._ff(block.txt_mlp, _modulate(txt, tm[3], tm[4]))
        scale, shift = self.norm_out.linear(F.silu(temb))[:, None].chunk(2, -1)
        out = self.proj_out(F.layer_norm(img, (img.shape[-1],)) * (1 + scale) + shift)[:, :tokens]
        hh, ww = -(-h // 2), -(-w // 2)
        out = out.view(b, t, hh, ww, c, 2, 2).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, t, 2 * hh, 2 * ww)
        return out[..., :h, :w]


def _sd3_block(hidden: int, pre_only: bool, self_attn2: bool) -> nn.Module:
    """``DismantledBlock``: ``attn.{qkv,proj}`` (no ``proj`` when ``pre_only``), ``attn2`` (SD3.5 Medium's second image
    self-attention), ``mlp.{fc1,fc2}``, ``adaLN_modulation.1`` (2, 6 or 9 modulation vectors)."""
    b = nn.Module()
    b.attn = nn.Module()
    b.attn.qkv = nn.Linear(hidden, 3 * hidden)
    if not pre_only:
        b.attn.proj = nn.Linear(hidden, hidden)
        b.mlp = nn.Module()
        b.mlp.fc1, b.mlp.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
    if self_attn2:
        b.attn2 = nn.Module()
        b.attn2.qkv, b.attn2.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
    n = 2 if pre_only else (9 if self_attn2 else 6)
    b.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, n * hidden))
    return b


class TinyMMDiT(nn.Module):
    """ComfyUI's ``OpenAISignatureMMDITWrapper`` (SD3, SD3.5): ``x_embedder.proj`` a 2x2 convolution (a feature-map
    output), ``context_embedder``, ``t_embedder.mlp.{0,2}``, ``y_embedder.mlp.{0,2}``, ``joint_blocks.N.{context_block,
    x_block}`` whose attention runs on ``[context, x]`` inside the block only (the last context block ``pre_only``),
    ``final_layer.{linear, adaLN_modulation.1}``."""

    def __init__(self, in_channels: int = 16, context_dim: int = 32, pooled_dim: int = 32, hidden: int = 32,
                 heads: int = 2, depth: int = 2, self_attn2: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.patch_size, self.heads, self.out_channels = 2, heads, in_channels
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, hidden, 2, stride=2)
        self.x_embedder.patch_size = (2, 2)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.y_embedder = nn.Module()
        self.y_embedder.mlp = nn.Sequential(nn.Linear(pooled_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.context_embedder = nn.Linear(context_dim, hidden)
        self.joint_blocks = nn.ModuleList()
        for i in range(depth):
            b = nn.Module()
            b.context_block = _sd3_block(hidden, pre_only=i == depth - 1, self_attn2=False)
            b.x_block = _sd3_block(hidden, pre_only=False, self_attn2=i in self_attn2)
            self.joint_blocks.append(b)
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(hidden, 4 * in_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Optional[Tensor] = None, control=None,
                transformer_options: Optional[dict] = None, **kwargs) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.x_embedder.proj(pad_to_patch(x, 2)).flatten(2).transpose(1, 2)
        vec = self.t_embedder.mlp(timestep_embedding(timesteps * 1000, 256))
        if y is not None:
            vec = vec + self.y_embedder.mlp(y)
        ctx = self.context_embedder(context)
        for block in self.joint_blocks:
            cb, xb = block.context_block, block.x_block
            cm = cb.adaLN_modulation(vec)[:, None].chunk(cb.adaLN_modulation[1].out_features // tokens.shape[-1], -1)
            xm = xb.adaLN_modulation(vec)[:, None].chunk(xb.adaLN_modulation[1].out_features // tokens.shape[-1], -1)
            cq, ck, cv = cb.attn.qkv(_modulate(ctx, cm[0], cm[1])).chunk(3, -1)
            xq, xk, xv = xb.attn.qkv(_modulate(tokens, xm[0], xm[1])).chunk(3, -1)
            out = attend(torch.cat([cq, xq], 1), torch.cat([ck, xk], 1), torch.cat([cv, xv], 1), self.heads)
            c_out, x_out = out[:, :ctx.shape[1]], out[:, ctx.shape[1]:]
            if hasattr(cb.attn, "proj"):
                ctx = ctx + cm[2] * cb.attn.proj(c_out)
                ctx = ctx + cm[5] * cb.mlp.fc2(F.gelu(cb.mlp.fc1(_modulate(ctx, cm[3], cm[4])), approximate="tanh"))
            tokens = tokens + xm[2] * xb.attn.proj(x_out)
            if hasattr(xb, "attn2"):
                qkv = xb.attn2.qkv(_modulate(tokens, xm[6], xm[7])).chunk(3, -1)
                tokens = tokens + xm[8] * xb.attn2.proj(attend(*qkv, self.heads))
            mlp = F.gelu(xb.mlp.fc1(_modulate(tokens, xm[3], xm[4])), approximate="tanh")
            tokens = tokens + xm[5] * xb.mlp.fc2(mlp)
        shift, scale = self.final_layer.adaLN_modulation(vec)[:, None].chunk(2, -1)
        return unpatchify(self.final_layer.linear(_modulate(tokens, shift, scale)), 2, c, h, w)


class TinyWan(nn.Module):
    """ComfyUI's ``WanModel`` (Wan 2.1, Wan 2.2 14B): ``patch_embedding`` a 1x2x2 Conv3d on [B, C, T, H, W] (a 5-D
    feature-map output), tokens ordered (frame, row, column), ``text_embedding.{0,2}``, ``time_embedding.{0,2}``,
    ``time_projection.1``, ``blocks.N.{self_attn.{q,k,v,o}, cross_attn.{q,k,v,o}, ffn.{0,2}}`` (cross-attention keys
    and values on the text), ``head.head``."""

    def __init__(self, in_channels: int = 16, text_dim: int = 32, dim: int = 32, heads: int = 2,
                 layers: int = 1) -> None:
        super().__init__()
        self.patch_size, self.heads, self.out_dim = (1, 2, 2), heads, in_channels
        self.patch_embedding = nn.Conv3d(in_channels, dim, (1, 2, 2), stride=(1, 2, 2))
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            b = nn.Module()
            for attention in ("self_attn", "cross_attn"):
                a = nn.Module()
                for name in "qkvo":
                    setattr(a, name, nn.Linear(dim, dim))
                setattr(b, attention, a)
            b.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
            b.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
            self.blocks.append(b)
        self.head = nn.Module()
        self.head.head = nn.Linear(dim, 4 * in_channels)
        self.head.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, clip_fea=None, time_dim_concat=None,
                transformer_options: Optional[dict] = None, **kwargs) -> Tensor:
        b, c, t, h, w = x.shape
        x = F.pad(x, (0, (-w) % 2, 0, (-h) % 2))
        grid = x.shape[2], x.shape[3] // 2, x.shape[4] // 2
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)
        e = self.time_embedding(timestep_embedding(timestep * 1000, 256))
        mods = (self.time_projection(e).unflatten(1, (6, -1)))
        ctx = self.text_embedding(context)
        for block in self.blocks:
            m = (block.modulation + mods).chunk(6, 1)
            sa = block.self_attn
            y = _modulate(tokens, m[0], m[1])
            tokens = tokens + m[2] * sa.o(attend(sa.q(y), sa.k(y), sa.v(y), self.heads))
            ca = block.cross_attn
            q = ca.q(F.layer_norm(tokens, (tokens.shape[-1],)))
            tokens = tokens + ca.o(attend(q, ca.k(ctx), ca.v(ctx), self.heads))
            tokens = tokens + m[5] * block.ffn(_modulate(tokens, m[3], m[4]))
        shift, scale = (self.head.modulation + e[:, None]).chunk(2, 1)
        out = self.head.head(_modulate(tokens, shift, scale))
        out = out.view(b, *grid, 1, 2, 2, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, c, grid[0], 2 * grid[1], 2 * grid[2])
        return out[..., :h, :w]
