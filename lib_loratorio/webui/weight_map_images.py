"""The weight maps as result images: per generated image, one heatmap per LoRA over it, labelled."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..weight_map_pictures import weight_map_pictures
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
        pictures = weight_map_pictures(picture, session.names, labelled, index + 1)
        images += pictures
        infotexts += [processed.infotexts[position] if position < len(processed.infotexts) else ""] * len(pictures)
    return images, infotexts
