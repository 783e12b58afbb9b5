"""The weight maps of a MODEL's last sampling run as a ComfyUI IMAGE batch: one heatmap per LoRA and image."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import LoratorioError
from ..weight_map_pictures import weight_map_pictures
from .composing import ComfySession


def weight_map_images(session: ComfySession, images: torch.Tensor) -> torch.Tensor:
    """Per image of the last run (in batch order) and per LoRA, its weights over ``images`` [B, H, W, 3] (ComfyUI's
    IMAGE: float 0..1), labelled; returned as an IMAGE [B * N, H, W, 3]."""
    maps = session.last_run_maps
    if maps is None:
        raise LoratorioError("No sampling run of this LoRAtorio model has finished yet: connect the IMAGE of the "
                             "VAE Decode after its sampler, so that LoRAtorio Weight Maps runs after it.")
    if not maps:
        raise LoratorioError("The last run kept no weight maps: turn on 'show_weight_maps' in LoRAtorio Apply "
                             "(the Composite and Switch modes have none).")
    if images.shape[0] != len(maps):
        raise LoratorioError(f"LoRAtorio Weight Maps got {images.shape[0]} image(s) for a run of "
                             f"{len(maps)}: connect the decoded images of that run.")
    out = []
    for index, labelled in sorted(maps.items()):
        picture = (images[index, ..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out += [torch.from_numpy(np.asarray(heat).copy()).float() / 255
                for heat in weight_map_pictures(picture, session.names, labelled, index + 1)]
    return torch.stack(out)
