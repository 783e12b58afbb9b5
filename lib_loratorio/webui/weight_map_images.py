"""The weight maps as result images: per generated image, one heatmap per LoRA over it (labelled), and on request one
grayscale mask per LoRA."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from ..composing_session import WeightMaps
from ..weight_map_pictures import weight_map_pictures
from ..weight_masks import unique_names, weight_masks
from .session import Session


def _generated(maps: WeightMaps, processed) -> Iterator[tuple[int, int, list]]:
    """(image index in the request, its position in ``processed.images``, its labelled maps) of each image with maps."""
    first = getattr(processed, "index_of_first_image", 0)
    for index, labelled in sorted(maps.items()):
        if first + index < len(processed.images):
            yield index, first + index, labelled


def _infotext(processed, position: int) -> str:
    return processed.infotexts[position] if position < len(processed.infotexts) else ""


def weight_map_images(session: Session, processed) -> tuple[list[Image.Image], list[str]]:
    """The heatmap images of ``processed``'s images, and an infotext for each (its image's)."""
    images, infotexts = [], []
    for index, position, labelled in _generated(session.weight_maps, processed):
        picture = torch.from_numpy(np.asarray(processed.images[position].convert("RGB")).copy())
        pictures = weight_map_pictures(picture, session.names, labelled, index + 1)
        images += pictures
        infotexts += [_infotext(processed, position)] * len(pictures)
    return images, infotexts


def weight_mask_images(session: Session, processed) -> tuple[list[Image.Image], list[str]]:
    """Per image of ``processed`` and per LoRA (in its tags' order), the LoRA's mean weight as a grayscale ("L") image
    of the image's size (255 = weight 1), and an infotext for each: its image's, naming the LoRA."""
    images, infotexts = [], []
    names = [name.replace(":", "").replace(",", "") for name in unique_names(session.names)]  # as infotexts hold them
    for _, position, labelled in _generated(session.weight_maps, processed):
        width, height = processed.images[position].size
        masks = weight_masks(labelled[0][1], height, width)  # labelled[0]: the mean over the steps
        for name, mask in zip(names, masks, strict=True):
            images.append(Image.fromarray((mask * 255).round().to(torch.uint8).numpy()))  # 2-D uint8: mode "L"
            infotexts.append(f"{_infotext(processed, position)}, LoRAtorio mask: {name}".lstrip(", "))
    return images, infotexts
