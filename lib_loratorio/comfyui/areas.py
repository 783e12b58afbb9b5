"""Area conditioning (ConditioningSetArea, set_cond_area "mask bounds"...) under LoRAtorio in ComfyUI.

ComfyUI evaluates a conditioning entry restricted to an area on the area's crop of the latent, as a chunk of its
own (``comfy.samplers.get_area_and_mult``), and tells a model call which entry each chunk is through
``transformer_options["uuids"]``. LoRAtorio routes such rows like the rest, on the crop: each (image, area) is a
routing region of its own, with its own weight maps (the composer keys them apart from the whole-image rows, so
a negative prompt's rows pair with the prompt rows of the same region and shapes never mix). For the weight maps
a user sees, the regions' maps are put back at their place in the image and averaged where they overlap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch

from ..model_call import RowLayout

#: an area as ComfyUI crops it, in latent pixels: (height, width, y, x)
Area = tuple[int, int, int, int]


def areas_of(conds: Iterable[Optional[list]], latent: torch.Tensor) -> dict[Any, Area]:
    """{entry uuid: its area, clipped to the latent as ComfyUI crops it} for the entries of ``conds`` (the prompt's
    and the negative prompt's lists of a step) that have one."""
    height, width = latent.shape[-2:]
    out = {}
    for entries in conds:
        for entry in entries or ():
            area = entry.get("area")
            if area is None or len(area) != 4 or "uuid" not in entry:
                continue
            h, w, y, x = (int(v) for v in area)
            out[entry["uuid"]] = (min(height - y, h), min(width - x, w), y, x)
    return out


class AreaRegions:
    """Routing keys of a sampling run's rows: an image's whole-image rows keep its index, an (image, area) pair gets
    a negative key of its own."""

    def __init__(self) -> None:
        self.areas: dict[Any, Area] = {}            # the areas of the step's entries, by uuid
        self._keys: dict[tuple[int, Area], int] = {}

    def layout(self, layout: RowLayout, uuids: list) -> RowLayout:
        """``layout`` with each row of an area chunk keyed by its (image, area)."""
        chunk_areas = [self.areas.get(uuid) for uuid in uuids]
        if len(chunk_areas) * layout.per_chunk != len(layout.image_of_row) or not any(chunk_areas):
            return layout
        keys = []
        for row, image in enumerate(layout.image_of_row):
            area = chunk_areas[row // layout.per_chunk]
            keys.append(image if area is None else self._keys.setdefault((image, area), -1 - len(self._keys)))
        return dataclasses.replace(layout, image_of_row=keys)

    def covers(self, uuids: list, size: tuple[int, ...]) -> bool:
        """Whether every chunk of a call whose input is ``size`` (latent pixels) is an area of that size."""
        areas = [self.areas.get(uuid) for uuid in uuids]
        return bool(areas) and all(a is not None and tuple(a[:2]) == tuple(size) for a in areas)

    def per_image(self, maps: Mapping[int, torch.Tensor], size: tuple[int, int]) -> dict[int, torch.Tensor]:
        """Each image's maps [N, *size] from the run's maps by routing key: the whole-image rows' maps and its areas'
        at their place, averaged where they overlap; where no row of the image reaches, every LoRA gets 1/N. A run
        without areas keeps its maps as they are (a video's too: their shape is the composer's, frames stacked)."""
        if not self._keys:
            return dict(maps)
        images = {key for key in maps if key >= 0} | {image for (image, _), key in self._keys.items() if key in maps}
        out = {}
        for image in sorted(images):
            total = torch.zeros(next(iter(maps.values())).shape[0], *size)
            count = torch.zeros(size)
            if image in maps:
                total += maps[image]
                count += 1
            for (owner, (h, w, y, x)), key in self._keys.items():
                if owner == image and key in maps:
                    total[:, y:y + h, x:x + w] += maps[key]
                    count[y:y + h, x:x + w] += 1
            out[image] = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, 1 / total.shape[0]))
        return out

    def clear(self) -> None:
        self.areas.clear()
        self._keys.clear()
