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


def _run_maps(session: ComfySession, images: torch.Tensor) -> WeightMaps:
    """The last run's maps, checked against ``images`` (the decoded images of that run)."""
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
    return maps


def weight_map_images(session: ComfySession, images: torch.Tensor) -> torch.Tensor:
    """Per image of the last run (in batch order) and per LoRA, its weights over ``images`` [B, H, W, 3] (ComfyUI's
    IMAGE: float 0..1), labelled; returned as an IMAGE [B * N, H, W, 3]."""
    out = []
    for index, labelled in sorted(_run_maps(session, images).items()):
        picture = (images[index, ..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out += [torch.from_numpy(np.asarray(heat).copy()).float() / 255
                for heat in weight_map_pictures(picture, session.names, labelled, index + 1)]
    return torch.stack(out)


def weight_map_masks(session: ComfySession, images: torch.Tensor, threshold: float = 0.0,
                     blur: float = 0.0) -> tuple[torch.Tensor, ...]:
    """MASK_OUTPUTS masks [B, H, W] (ComfyUI's MASK: 1 = selected) at the size of ``images``: the i-th is LoRA i's
    mean weight map of the last run over each image (see weight_masks.weight_masks for ``threshold`` and ``blur``),
    then empty masks up to MASK_OUTPUTS."""
    maps = _run_maps(session, images)
    height, width = images.shape[1:3]
    per_image = [weight_masks(labelled[0][1], height, width, threshold=threshold, blur=blur)
                 for _, labelled in sorted(maps.items())]   # labelled[0]: the mean over the steps
    stacked = torch.stack(per_image, dim=1).cpu()            # [N, B, H, W]
    empty = torch.zeros(len(per_image), height, width)
    return tuple(stacked[i] if i < stacked.shape[0] else empty for i in range(MASK_OUTPUTS))
