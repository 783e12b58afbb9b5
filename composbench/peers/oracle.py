"""Oracle region masks: each LoRA's change applied only inside its ground-truth region.

Not a published method: what a user with perfect hand-drawn masks gets from masked LoRA
application (regional LoRA tools, FreeFuse with manual masks). The regions are the world's
ground truth (``WorldSpec.region_masks``: regions.py for the single-figure world, the pixels world.py can
paint for a concept, union over its jitters, a style everywhere, a background everywhere the other
requested concepts are not; duo.py for the two-figure world, the first character on the left figure). The
masks are the same for every seed and step; applied as in ``masked.py``: by default ordinary CFG,
both rows with the masks (what a user's masks on a LoRA-patched model do); option
``uncond="base"`` takes the base model's unconditional prediction instead, as LoRAtorio does, so
that oracle routing can be compared with LoRAtorio's routing under the same guidance. Cost: two
UNet rows a step, as Merge.
"""

from __future__ import annotations

import torch

from .masked import sample_with_masks


def run(bench, ctx) -> torch.Tensor:
    masks = torch.from_numpy(bench.spec.region_masks(ctx.concepts)).unsqueeze(0).expand(ctx.b, -1, -1, -1)
    return sample_with_masks(bench, ctx, ctx.x, masks)
