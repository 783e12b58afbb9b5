"""The weight maps of a MODEL's last sampling run as a ComfyUI IMAGE batch: one heatmap per LoRA and image."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import LoratorioError
from ..weight_map_pictures import weight_map_pictures
from .composing import ComfySession


def weight_map_images(session: ComfySession, images: torch.Tensor) -> torch.Tensor:
    """Per image of the last run (in batch order) and per LoRA, its weights over ``images`` [B, H, W, 3] (ComfyUI's
    IMAGE: float 0..1), labelled; returned as an IMAGE [B * N, H, W, 3]. A video's decoded frames (B videos of F
    frames each) each get the maps of the latent frame they come from: [B * F * N, H, W, 3]."""
    maps = session.last_run_maps
    if maps is None:
        raise LoratorioError("No sampling run of this LoRAtorio model has finished yet: connect the IMAGE of the "
                             "VAE Decode after its sampler, so that LoRAtorio Weight Maps runs after it.")
    if not maps:
        raise LoratorioError("The last run kept no weight maps: turn on 'show_weight_maps' in LoRAtorio Apply "
                             "(the Composite and Switch modes have none).")
    frames = images.shape[0] // len(maps) if session.stacked is not None else 1
    if images.shape[0] != len(maps) * frames:
        raise LoratorioError(f"LoRAtorio Weight Maps got {images.shape[0]} image(s) for a run of "
                             f"{len(maps)}: connect the decoded images of that run.")
    out = []
    for index, labelled in sorted(maps.items()):
        for frame in range(frames):
            row = index * frames + frame
            picture = (images[row, ..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            if session.stacked is not None:
                labelled_frame = [(f"{label}, frame {frame + 1}" if frames > 1 else label,
                                   session.stacked.frame_maps(m, frame, frames)) for label, m in labelled]
            else:
                labelled_frame = labelled
            out += [torch.from_numpy(np.asarray(heat).copy()).float() / 255
                    for heat in weight_map_pictures(picture, session.names, labelled_frame, index + 1)]
    return torch.stack(out)
