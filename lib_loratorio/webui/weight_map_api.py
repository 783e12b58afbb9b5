"""The weight maps of LoRAtorio's generations, for other extensions: a small Python API (the README's "Weight maps
for other extensions").

Import it inside a hook (the WebUI has loaded LoRAtorio's scripts by then, which makes ``lib_loratorio``
importable)::

    from lib_loratorio.webui import weight_map_api

    for image in weight_map_api.last_generation():          # or of_generation(p), during a generation
        masks = image.masks()                                # {LoRA name: float32 [height, width] in 0..1}
        shares = image.shares()                              # {LoRA name: its share of the image}
        face = image.shares(region=face_mask)                # ... of a region (a detector's mask)

A map is each LoRA's SoftMin weight in each pixel, averaged over the steps of the generation's last pass (hires
when there is one); the weights of a pixel sum to 1. LoRAs are named as in their tags (a LoRA tagged twice: its
second name gets " (2)"). Maps exist for generations LoRAtorio composed in the LoRAtorio modes (not Composite or
Switch), whether or not *Show weight maps* is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..weight_masks import owners, pixel_shares, region_shares, unique_names, weight_masks
from .session import Session, get_session

#: VAE pixels per latent pixel (SD1.x, SD2.x, SDXL and Flux alike)
LATENT_SCALE = 8


@dataclass(frozen=True)
class ImageWeightMaps:
    """The weight maps of one generated image."""

    index: int                 # the image's number in its generation, from 0 (over every batch)
    names: tuple[str, ...]     # the LoRAs, in their tags' order
    maps: torch.Tensor         # [N, h, w] at the latent's resolution, float32 on the CPU

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image the maps were made for."""
        return self.maps.shape[-1] * LATENT_SCALE, self.maps.shape[-2] * LATENT_SCALE

    def masks(self, width: Optional[int] = None, height: Optional[int] = None, *, threshold: float = 0.0,
              blur: float = 0.0) -> dict[str, np.ndarray]:
        """{LoRA name: mask} as float32 arrays [height, width] in 0..1 (the image's size by default). ``threshold``
        above 0 makes them binary (1 where the weight is at least that); ``blur`` feathers them (Gaussian, pixels)."""
        default_width, default_height = self.size
        masks = weight_masks(self.maps, height or default_height, width or default_width, threshold=threshold,
                             blur=blur)
        return dict(zip(self.names, masks.numpy(), strict=True))

    def shares(self, region: Any = None) -> dict[str, float]:
        """{LoRA name: its share} of ``region`` (an array or PIL image, [height, width], 0..1 or 0..255 for 8-bit
        images; any size, compared at its own) or of the whole image; the shares sum to 1."""
        return dict(zip(self.names, self._shares(region).tolist(), strict=True))

    def owners(self, region: Any = None, min_ratio: float = 0.5) -> list[str]:
        """The LoRAs whose share of ``region`` is at least ``min_ratio`` times the largest share (every LoRA where
        the maps are uniform)."""
        return [self.names[i] for i in owners(self._shares(region), min_ratio)]

    def _shares(self, region: Any) -> torch.Tensor:
        if region is None:
            return pixel_shares(self.maps).flatten(1).mean(dim=1)
        return region_shares(self.maps, region_tensor(region))


def region_tensor(region: Any) -> torch.Tensor:
    """A region [H, W] in 0..1 from an array, tensor or PIL image (8-bit values are divided by 255)."""
    array = np.asarray(region.convert("L") if hasattr(region, "convert") else region)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(array.astype(np.float32) / scale)


def of_session(session: Session) -> list[ImageWeightMaps]:
    """The maps a session kept, image by image."""
    names = tuple(unique_names(session.names))
    return [ImageWeightMaps(index, names, labelled[0][1]) for index, labelled in sorted(session.weight_maps.items())]


def of_generation(p) -> list[ImageWeightMaps]:
    """The maps of generation ``p`` so far (empty if LoRAtorio did not compose it)."""
    session = get_session(p)
    return of_session(session) if session is not None else []


_last: list[ImageWeightMaps] = []


def last_generation() -> list[ImageWeightMaps]:
    """The maps of the last generation LoRAtorio composed that finished (empty before the first)."""
    return list(_last)


def record(session: Session) -> None:
    """Keep ``session``'s maps as the last generation's (when its generation has finished)."""
    global _last
    _last = of_session(session)
