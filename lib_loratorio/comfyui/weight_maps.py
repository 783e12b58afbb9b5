"""The weight maps of a MODEL's last sampling run as a ComfyUI IMAGE batch: one heatmap per LoRA and image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import LoratorioError
from ..heatmaps import overlay
from ..image_label import draw_label
from .composing import ComfySession


def weight_map_images(session: ComfySession, images: torch.Tensor) -> torch.Tensor:
    """Per image of the last run (in batch order) and per LoRA, its weights over ``images`` [B, H, W, 3] (ComfyUI's
    IMAGE: float 0..1), labelled; returned as an IMAGE [B * N, H, W, 3]."""
    if session.last_maps is None:
        raise LoratorioError("No sampling run of this LoRAtorio model has finished yet: connect the IMAGE of the "
                             "VAE Decode after its sampler, so that LoRAtorio Weight Maps runs after it.")
    if not session.last_maps:
        raise LoratorioError("The last run kept no weight maps: turn on 'show_weight_maps' in LoRAtorio Apply "
                             "(the Composite and Switch modes have none).")
    if images.shape[0] != len(session.last_maps):
        raise LoratorioError(f"LoRAtorio Weight Maps got {images.shape[0]} image(s) for a run of "
                             f"{len(session.last_maps)}: connect the decoded images of that run.")
    out = []
    for index, maps in sorted(session.last_maps.items()):
        picture = (images[index, ..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        for name, weights in zip(session.names, maps, strict=True):
            heat = Image.fromarray(overlay(weights, picture).numpy())
            draw_label(heat, f"{name}, mean, image {index + 1}")
            out.append(torch.from_numpy(np.asarray(heat).copy()).float() / 255)
    return torch.stack(out)
