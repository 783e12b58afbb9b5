"""The weight maps as result images: per generated image, one heatmap per LoRA over it, labelled."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..heatmaps import overlay
from ..image_label import draw_label
from .session import Session


def weight_map_images(session: Session, processed) -> tuple[list[Image.Image], list[str]]:
    """The heatmap images of ``processed``'s images, and an infotext for each (its image's)."""
    images, infotexts = [], []
    first = getattr(processed, "index_of_first_image", 0)
    for index, labelled in sorted(session.weight_maps.items()):
        position = first + index
        if position >= len(processed.images):
            continue
        picture = torch.from_numpy(np.asarray(processed.images[position].convert("RGB")).copy())
        for label, maps in labelled:
            for name, weights in zip(session.names, maps, strict=True):
                heat = Image.fromarray(overlay(weights, picture).numpy())
                draw_label(heat, f"{name}, {label}, image {index + 1}")
                images.append(heat)
                infotexts.append(processed.infotexts[position] if position < len(processed.infotexts) else "")
    return images, infotexts
