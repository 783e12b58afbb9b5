"""LoRAtorio's weight maps at the resolution of any layer's output, for the fast mode's mixed rows.

Between refreshes, the fast mode runs the prompt's rows once with every LoRA active and scales
each LoRA's change of every layer by its weight map, so that a patch owned by LoRA i gets LoRA i's
delta there. The maps are computed on the latent grid ([H, W], or [T, H, W] for a video's frames); a
layer's output is:

* a feature map [rows, C, h, w] (convolutions; [rows, C, t, h, w] for a video): the maps are
  area-averaged to its size;
* a UNet's token sequence [rows, T, C] whose T is the latent grid at one of the UNet's scales
  (ceil(H / 2^k) x ceil(W / 2^k), row-major as attention flattens it): the maps at that scale, one
  weight per token;
* a transformer's token sequence: the image tokens where the model's token layout puts them
  (image_tokens.TokenLayout: text before them in joint sequences, references and padding after),
  one weight per image token at the model's token grid, the other tokens as below;
* anything else (time and modulation embeddings; a transformer's text stream): not spatial. There each
  LoRA's change is scaled by the mean of its weight map over the image, i.e. folded in at the share
  of the image the LoRA owns.

A UNet's cross-attention follows these rules too: its query and output projections act on image
tokens, its keys and values on the text (each LoRA's change at its mean weight). Computing it once per
LoRA and blending the outputs by the maps instead gave the same recall on composbench at a higher cost
(composbench/attention_per_lora.py).

Layers that act on the text are named so by the caller (``text_side``): the token count alone can
coincide with a grid size.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .image_tokens import TokenLayout

# Module names of layers whose input is the text (or some other non-image input), whatever their shape says:
# UNet cross-attention keys/values; Flux, SD3 and Qwen-Image text streams; Lumina's caption refiner; Wan's
# cross-attention keys/values and its text and CLIP-vision embeddings; Chroma's guidance approximator (its
# [B, 344, hidden] output is no image).
TEXT_SIDE_SUFFIXES = ("attn2.to_k", "attn2.to_v", "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out",
                      "context_embedder", "txt_in", "cross_attn.k", "cross_attn.v", "cross_attn.k_img",
                      "cross_attn.v_img")
TEXT_SIDE_PARTS = ("txt_attn", "txt_mlp", "txt_mod", "ff_context", "norm1_context", "context_block", "context_refiner",
                   "cap_embedder", "text_embedding", "img_emb", "distilled_guidance_layer")


def is_text_side(name: str) -> bool:
    """Whether the layer ``name`` (dotted, any prefix) works on text tokens (or another input that is not the
    image's tokens) rather than the image."""
    return name.endswith(TEXT_SIDE_SUFFIXES) or any(f".{part}." in f".{name}." for part in TEXT_SIDE_PARTS)


class LayerMaps:
    """Weight maps of the mixed rows ([rows, N, H, W] or [rows, N, T, H, W]: the weights each LoRA acts with, the
    SoftMin's or rescaled to each patch's owner) at any layer's layout; ``tokens``: a transformer's token layout
    (None: a UNet's multi-scale grids)."""

    def __init__(self, maps: Tensor, tokens: Optional[TokenLayout] = None, max_scale: int = 6) -> None:
        self.maps = maps.float()
        self.tokens = tokens
        *frames, height, width = maps.shape[2:]
        self._grids: dict[int, tuple[int, ...]] = {}
        if tokens is not None:
            grid = tokens.grid(maps.shape[2:])
            self._grids[math.prod(grid)] = grid
        else:
            for k in range(max_scale + 1):
                grid = (*frames, -(-height // 2 ** k), -(-width // 2 ** k))
                self._grids.setdefault(math.prod(grid), grid)
        self._resized: dict[tuple[int, ...], Tensor] = {}
        self.mean = self.maps.flatten(2).mean(dim=-1)  # [rows, N]
        #: LoRAs with any weight in these rows (top-k selection leaves the others at 0 everywhere)
        self.active = tuple(bool(a) for a in self.maps.flatten(2).amax(dim=(0, 2)) > 0)

    def at(self, size: tuple[int, ...]) -> Tensor:
        """Maps area-averaged to ``size`` (the latent's axes): [rows, N, *size]."""
        if size not in self._resized:
            maps = self.maps
            pool = F.adaptive_avg_pool3d if len(size) == 3 else F.adaptive_avg_pool2d
            self._resized[size] = maps if tuple(maps.shape[2:]) == size else pool(maps, size)
        return self._resized[size]

    def weights_for(self, out: Tensor, text_side: bool) -> Tensor:
        """Per-LoRA weights broadcastable to ``out`` (the mixed rows of one layer's output): [N, rows, ...]."""
        if not text_side and out.dim() == self.maps.dim():
            return self.at(tuple(out.shape[2:])).transpose(0, 1).unsqueeze(2)             # [N, rows, 1, (t,) h, w]
        if not text_side and out.dim() == 3:
            tokens = self._token_weights(out.shape[1])
            if tokens is not None:
                return tokens.unsqueeze(-1)                                                 # [N, rows, T, 1]
        mean = self.mean.transpose(0, 1)                                                    # [N, rows]
        return mean.reshape(*mean.shape, *[1] * (out.dim() - 1))

    def _token_weights(self, count: int) -> Optional[Tensor]:
        if self.tokens is None:
            grid = self._grids.get(count)
            return None if grid is None else self.at(grid).flatten(2).transpose(0, 1)     # [N, rows, T]
        (image, grid), = self._grids.items()
        start = self.tokens.image_start(count, image)
        if start is None:
            return None
        spatial = self.at(grid).flatten(2).transpose(0, 1)
        mean = self.mean.transpose(0, 1).unsqueeze(-1)
        parts = [mean.expand(-1, -1, start), spatial, mean.expand(-1, -1, count - start - image)]
        return torch.cat([p for p in parts if p.shape[-1]], dim=-1)
