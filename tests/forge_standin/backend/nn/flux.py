"""``backend/nn/flux.py`` stand-in: a TINY random-weight ``IntegratedFluxTransformer2DModel``.

Mirrored: the constructor signature, the BFL module names (``img_in``, ``time_in.{in_layer,out_layer}``,
``vector_in.*``, ``guidance_in.*``, ``txt_in``, ``double_blocks.N.{img_mod.lin, img_attn.qkv (fused q/k/v),
img_attn.norm.{query_norm,key_norm}.scale, img_attn.proj, img_mlp.0, img_mlp.2}`` and the ``txt_*`` twins,
``single_blocks.N.{modulation.lin, linear1 (fused qkv + mlp in), linear2, norm.*.scale}``,
``final_layer.{adaLN_modulation.1, linear}``), and ``forward(x, timestep, context, y, guidance=None,
**kwargs)``: circular pad to even H/W, 2x2 patchify to ``[B, h*w, 4C]`` tokens, txt tokens first in the
single blocks, unpatchify and crop. Linear layers are built with ``nn.Linear`` inside
``using_forge_operations()`` -> ``ForgeOperations.Linear``.
Left out: RoPE (``pe_embedder``; attention here has no positional encoding), exact modulation maths.
"""

import math

import torch
from torch import nn

from backend.operations import using_forge_operations


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x):
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)


def attention(q, k, v):
    """q/k/v [B, heads, L, D] -> [B, L, heads*D]."""
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return x.transpose(1, 2).flatten(2)


def split_heads(qkv, heads):
    B, L, _ = qkv.shape
    q, k, v = qkv.view(B, L, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec):
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False):
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size))
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size))

    def _qkv(self, attn, x):
        q, k, v = split_heads(attn.qkv(x), self.num_heads)
        return attn.norm.query_norm(q), attn.norm.key_norm(k), v

    def forward(self, img, txt, vec, pe=None):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        iq, ik, iv = self._qkv(self.img_attn, (1 + i_scale1) * self.img_norm1(img) + i_shift1)
        tq, tk, tv = self._qkv(self.txt_attn, (1 + t_scale1) * self.txt_norm1(txt) + t_shift1)
        out = attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2))
        txt_out, img_out = out[:, :txt.shape[1]], out[:, txt.shape[1]:]
        img = img + i_gate1 * self.img_attn.proj(img_out)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * self.img_norm2(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * self.txt_norm2(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x, vec, pe=None):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1((1 + scale) * self.pre_norm(x) + shift), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_heads(qkv, self.num_heads)
        out = attention(self.norm.query_norm(q), self.norm.key_norm(k), v)
        return x + gate * self.linear2(torch.cat([out, self.mlp_act(mlp)], dim=2))


class LastLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


class IntegratedFluxTransformer2DModel(nn.Module):
    storage_dtype = torch.float32
    computation_dtype = torch.float32

    def __init__(self, in_channels: int, vec_in_dim: int, context_in_dim: int, hidden_size: int, mlp_ratio: float, num_heads: int,
                 depth: int, depth_single_blocks: int, axes_dim: list, theta: int, qkv_bias: bool, guidance_embed: bool):
        super().__init__()
        with using_forge_operations():
            self.guidance_embed = guidance_embed
            self.in_channels = in_channels * 4
            self.out_channels = self.in_channels
            self.hidden_size = hidden_size
            self.num_heads = num_heads
            self.img_in = nn.Linear(self.in_channels, hidden_size, bias=True)
            self.time_in = MLPEmbedder(256, hidden_size)
            self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
            self.guidance_in = MLPEmbedder(256, hidden_size) if guidance_embed else nn.Identity()
            self.txt_in = nn.Linear(context_in_dim, hidden_size)
            self.double_blocks = nn.ModuleList([DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
            self.single_blocks = nn.ModuleList([SingleStreamBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth_single_blocks)])
            self.final_layer = LastLayer(hidden_size, 1, self.out_channels)

    def inner_forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed:
            if guidance is None:
                raise ValueError("Didn't get guidance strength for guidance distilled model.")
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec)
        x = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            x = block(x, vec=vec)
        return self.final_layer(x[:, txt.shape[1]:], vec)

    def forward(self, x, timestep, context, y, guidance=None, **kwargs):
        bs, c, h, w = x.shape
        p = 2
        x = torch.nn.functional.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p), mode="circular")
        h_len, w_len = x.shape[2] // p, x.shape[3] // p
        img = x.view(bs, c, h_len, p, w_len, p).permute(0, 2, 4, 1, 3, 5).reshape(bs, h_len * w_len, c * p * p)
        img_ids = torch.zeros(bs, h_len * w_len, 3, dtype=x.dtype)
        txt_ids = torch.zeros(bs, context.shape[1], 3, dtype=x.dtype)
        out = self.inner_forward(img, img_ids, context, txt_ids, timestep, y, guidance)
        out = out.view(bs, h_len, w_len, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(bs, c, h_len * p, w_len * p)
        return out[:, :, :h, :w]
