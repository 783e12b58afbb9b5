"""LoRAtorio's weight maps at the resolution of any layer's output, for the fast mode's mixed rows.

Between refreshes, the fast mode runs the prompt's rows once with every LoRA active and scales
each LoRA's change of every layer by its weight map, so that a patch owned by LoRA i gets LoRA i's
delta there. The maps are computed on the latent grid [H, W]; a layer's output is:

* a feature map [rows, C, h, w] (convolutions): the maps are area-averaged to (h, w);
* a token sequence [rows, T, C] whose T is the latent grid at one of the UNet's scales
  (ceil(H / 2^k) x ceil(W / 2^k), row-major as attention flattens it; Flux packs 2x2 latent pixels
  into one token, which is the scale k = 1): the maps at that scale, one weight per token;
* a joint sequence [rows, P + T, C] (Flux's single blocks put P text tokens before the image
  tokens): text tokens as below, image tokens as above;
* anything else (time and modulation embeddings; Flux's text stream): not spatial. There each
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

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Module name endings of layers whose input is the text, whatever their shape says.
TEXT_SIDE_SUFFIXES = ("attn2.to_k", "attn2.to_v", "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out",
                      "context_embedder", "txt_in")
TEXT_SIDE_PARTS = ("txt_attn", "txt_mlp", "txt_mod", "ff_context", "norm1_context")


def is_text_side(name: str) -> bool:
    """Whether the layer ``name`` (dotted, any prefix) works on text tokens rather than the image."""
    return name.endswith(TEXT_SIDE_SUFFIXES) or any(f".{part}" in f".{name}" for part in TEXT_SIDE_PARTS)


class LayerMaps:
    """Weight maps of the mixed rows ([rows, N, H, W]: the weights each LoRA acts with, the SoftMin's or
    rescaled to each patch's owner) at any layer's layout."""

    def __init__(self, maps: Tensor, prefix_tokens: int = 0, max_scale: int = 6) -> None:
        self.maps = maps.float()
        self.prefix_tokens = prefix_tokens
        height, width = maps.shape[-2:]
        self._grids: dict[int, tuple[int, int]] = {}
        for k in range(max_scale + 1):
            h, w = -(-height // 2 ** k), -(-width // 2 ** k)
            self._grids.setdefault(h * w, (h, w))
        self._resized: dict[tuple[int, int], Tensor] = {}
        self.mean = self.maps.mean(dim=(-2, -1))  # [rows, N]
        #: LoRAs with any weight in these rows (top-k selection leaves the others at 0 everywhere)
        self.active = tuple(bool(a) for a in self.maps.flatten(2).amax(dim=(0, 2)) > 0)

    def at(self, size: tuple[int, int]) -> Tensor:
        """Maps area-averaged to ``size``: [rows, N, h, w]."""
        if size not in self._resized:
            maps = self.maps
            self._resized[size] = maps if tuple(maps.shape[-2:]) == size else F.adaptive_avg_pool2d(maps, size)
        return self._resized[size]

    def weights_for(self, out: Tensor, text_side: bool) -> Tensor:
        """Per-LoRA weights broadcastable to ``out`` (the mixed rows of one layer's output): [N, rows, ...]."""
        if not text_side and out.dim() == 4:
            return self.at(tuple(out.shape[-2:])).transpose(0, 1).unsqueeze(2)          # [N, rows, 1, h, w]
        if not text_side and out.dim() == 3:
            tokens = self._token_weights(out.shape[1])
            if tokens is not None:
                return tokens.unsqueeze(-1)                                                 # [N, rows, T, 1]
        mean = self.mean.transpose(0, 1)                                                    # [N, rows]
        return mean.reshape(*mean.shape, *[1] * (out.dim() - 1))

    def _token_weights(self, count: int) -> Optional[Tensor]:
        grid = self._grids.get(count)
        if grid is not None:
            return self.at(grid).flatten(2).transpose(0, 1)                                 # [N, rows, T]
        image = count - self.prefix_tokens
        grid = self._grids.get(image) if self.prefix_tokens and image > 0 else None
        if grid is None:
            return None
        spatial = self.at(grid).flatten(2).transpose(0, 1)
        text = self.mean.transpose(0, 1).unsqueeze(-1).expand(-1, -1, self.prefix_tokens)
        return torch.cat([text, spatial], dim=-1)
