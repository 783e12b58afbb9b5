"""Routing variants under test (issue 17) that the extension does not have: other rules for the weight
maps, and the region hints a user would give, taken from the world's ground truth.

Benchmark-only prototypes; a variant moves into lib_loratorio only if it wins on the dev part and
holds on the test part against the uniform-map control (region hints did: lib_loratorio/region_hints.py).

* ``relative``: sharper maps early in sampling. The paper's SoftMin of ``-cos / tau`` is nearly
  uniform while every LoRA's prediction is still close to the base model's (cosines above 0.99 at
  the first steps); here each patch's divergence ``1 - cos`` is divided by the step's mean divergence
  over every LoRA and patch before the SoftMin (temperature then relative: 0.5 = a patch twice as
  divergent as the mean is e^2 ahead), so the maps are as decisive at the first step as at the last.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from lib_loratorio.composer import BranchComposer
from lib_loratorio.composition import patch_means, patch_similarity, upsample_weights
from lib_loratorio.params import LoratorioParams
from lib_loratorio.region_hints import MaskHint, hint_prior

from . import world

RULES = ("softmin", "relative")


class RoutedComposer(BranchComposer):
    """BranchComposer whose weight maps follow ``rule`` (region hints as the extension applies them)."""

    def __init__(self, params: LoratorioParams, labels: Sequence[str], *, rule: str = "softmin", **kwargs) -> None:
        super().__init__(params, labels, **kwargs)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
        self.rule = rule

    def _weights(self, x: torch.Tensor, base: torch.Tensor, loras: torch.Tensor) -> torch.Tensor:
        if self.rule == "softmin":
            return super()._weights(x, base, loras)
        if self.prediction == "x0":
            base, loras = x - base, x.unsqueeze(0) - loras
        d, tau = self.params.patch_size, self.params.temperature
        divergence = 1.0 - patch_similarity(loras, base, d)  # [N, B, h, w]
        logits = divergence / (divergence.mean(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8) * tau)
        prior = hint_prior(self.hints, self.params.hint_strength, *base.shape[-2:])
        if prior is not None:
            logits = logits + patch_means(prior, d).unsqueeze(1)
        return upsample_weights(logits.softmax(dim=0), d, *base.shape[-2:])


def world_hints(comp: Sequence[str], regions) -> list[Optional[MaskHint]]:
    """The region hints a user would give from the world's ground truth ``regions`` [N, H, W]: each thing's
    (character, clothing, object) region; no hint for backgrounds and styles, which cover the image."""
    return [None if world.CATEGORY_OF[c] in ("background", "style") else MaskHint(torch.as_tensor(r).float())
            for c, r in zip(comp, regions, strict=True)]
