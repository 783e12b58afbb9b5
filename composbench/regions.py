"""Ground-truth regions of a composition's concepts: the masks a user with perfect hand-drawn masks gives.

``region_masks(concepts)`` is a pure function of the composition (no scene, no seed): per concept,
the pixels world.py can paint for it, whatever the scene's jitter, so that a concept's LoRA acting
inside its mask can draw it wherever the layout puts it.

* character, clothing, object: the union over the +-1 px jitters (dx, dy in {-1, 0, 1}) of the
  pixels the concept's drawing code paints, found by drawing it alone on an empty canvas;
* style: everywhere (a style transforms the whole image);
* background: everywhere not covered by the other requested concepts' regions (styles excepted),
  so that the background LoRA does not repaint the figure or the objects. Pixels in the jitter
  ring around a figure that the figure does not cover in a given image get no background LoRA
  there: at most a pixel's ring, which the base model's own background fills.

Regions may overlap (a hat's brim lies on the head): each LoRA acts at full weight in its own
region, as with separate hand-drawn masks. Float32 [N, SIZE, SIZE] in {0, 1}, in the order given.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from . import world

JITTERS = (-1, 0, 1)
_DRAWERS = {"character": world._character, "clothing": world._clothing, "object": world._object}


@lru_cache(maxsize=None)
def painted_region(concept: str) -> np.ndarray:
    """Bool [SIZE, SIZE]: the pixels world.py paints for ``concept`` under some +-1 px jitter
    (characters, clothing and objects only)."""
    category = world.CATEGORY_OF[concept]
    if category not in _DRAWERS:
        raise ValueError(f"{concept} ({category}) has no drawn region: styles and backgrounds cover the image")
    out = np.zeros((world.SIZE, world.SIZE), bool)
    for dx in JITTERS:
        for dy in JITTERS:
            canvas = np.full((world.SIZE, world.SIZE, 3), np.nan, np.float32)
            scene = world.Scene(concepts={category: concept}, figure=None, thing=None, dx=dx, dy=dy)
            _DRAWERS[category](canvas, scene, np.random.default_rng(0))
            out |= ~np.isnan(canvas).any(axis=-1)
    out.setflags(write=False)
    return out


def region_masks(concepts: Sequence[str]) -> np.ndarray:
    """Float32 [N, SIZE, SIZE]: where each of ``concepts`` (one composition) may be drawn."""
    drawn = {c: painted_region(c) for c in concepts if world.CATEGORY_OF[c] in _DRAWERS}
    masks = np.zeros((len(concepts), world.SIZE, world.SIZE), np.float32)
    for i, c in enumerate(concepts):
        category = world.CATEGORY_OF[c]
        if category == "style":
            masks[i] = 1.0
        elif category == "background":
            covered = np.zeros((world.SIZE, world.SIZE), bool)
            for other, region in drawn.items():
                if other != c:
                    covered |= region
            masks[i] = ~covered
        else:
            masks[i] = drawn[c]
    return masks
