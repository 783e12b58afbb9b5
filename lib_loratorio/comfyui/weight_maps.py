"""The weight maps of a MODEL's last sampling run for ComfyUI: one heatmap per LoRA and image (IMAGE), and one
MASK per LoRA over the run's images."""

from __future__ import annotations

import numpy as np
import torch

from ..composing_session import WeightMaps
from ..errors import LoratorioError
from ..weight_map_pictures import weight_map_pictures
from ..weight_masks import weight_masks
from .composing import ComfySession

#: MASK outputs of LoRAtorio Weight Maps, one per LoRA of the stack in its order (outputs past the stack's LoRAs
#: hold empty masks). A node's outputs are fixed in ComfyUI's node API, so this is a number, not the stack's size.
MASK_OUTPUTS = 6


def _run_maps(session: ComfySession, images: torch.Tensor) -> tuple[WeightMaps, int]:
    """The last run's maps, checked against ``images`` (the decoded images of that run), and how many decoded
    frames each of the run's images has (1 but for videos: B videos of F frames decode to B * F images)."""
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
    return maps, frames


def _frame_maps(session: ComfySession, labelled: list, frame: int, frames: int) -> list:
    """One image's labelled maps over its decoded frame ``frame`` of ``frames`` (a video's maps per latent frame)."""
    if session.stacked is None:
        return labelled
    return [(f"{label}, frame {frame + 1}" if frames > 1 else label, session.stacked.frame_maps(m, frame, frames))
            for label, m in labelled]


def weight_map_images(session: ComfySession, images: torch.Tensor) -> torch.Tensor:
    """Per image of the last run (in batch order) and per LoRA, its weights over ``images`` [B, H, W, 3] (ComfyUI's
    IMAGE: float 0..1), labelled; returned as an IMAGE [B * N, H, W, 3]. A video's decoded frames (B videos of F
    frames each) each get the maps of the latent frame they come from: [B * F * N, H, W, 3]."""
    maps, frames = _run_maps(session, images)
    out = []
    for index, labelled in sorted(maps.items()):
        for frame in range(frames):
            picture = (images[index * frames + frame, ..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            out += [torch.from_numpy(np.asarray(heat).copy()).float() / 255
                    for heat in weight_map_pictures(picture, session.names,
                                                    _frame_maps(session, labelled, frame, frames), index + 1)]
    return torch.stack(out)


def weight_map_masks(session: ComfySession, images: torch.Tensor, threshold: float = 0.0,
                     blur: float = 0.0) -> tuple[torch.Tensor, ...]:
    """MASK_OUTPUTS masks [B, H, W] (ComfyUI's MASK: 1 = selected) at the size of ``images``: the i-th is LoRA i's
    mean weight map of the last run over each image (see weight_masks.weight_masks for ``threshold`` and ``blur``),
    then empty masks up to MASK_OUTPUTS."""
    maps, frames = _run_maps(session, images)
    height, width = images.shape[1:3]
    per_image = [weight_masks(_frame_maps(session, labelled, frame, frames)[0][1], height, width, threshold=threshold,
                              blur=blur)                     # [0]: the mean over the steps
                 for _, labelled in sorted(maps.items()) for frame in range(frames)]
    stacked = torch.stack(per_image, dim=1).cpu()            # [N, B, H, W]
    empty = torch.zeros(len(per_image), height, width)
    return tuple(stacked[i] if i < stacked.shape[0] else empty for i in range(MASK_OUTPUTS))
