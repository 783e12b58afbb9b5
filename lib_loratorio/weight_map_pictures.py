"""Weight maps as captioned pictures over a generated image: what both the WebUIs and ComfyUI show."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from .heatmaps import overlay
from .image_label import draw_label


def weight_map_pictures(picture: torch.Tensor, names: Sequence[str], maps: Sequence[tuple[str, torch.Tensor]],
                        image_number: int) -> list[Image.Image]:
    """For each (label, maps [N, h, w]) of one image and each of its N LoRAs, the LoRA's weights over ``picture``
    ([H, W, 3] uint8), captioned "NAME, LABEL, image K" (``names[i]``: LoRA i as the user named it)."""
    out = []
    for label, weights in maps:
        for name, lora_weights in zip(names, weights, strict=True):
            heat = Image.fromarray(overlay(lora_weights, picture).numpy())
            draw_label(heat, f"{name}, {label}, image {image_number}")
            out.append(heat)
    return out
