"""Routing variants under test (issue 17): the composer with other rules for its weight maps.

Benchmark-only prototypes; a variant moves into lib_loratorio only if it wins on the dev part and
holds on the test part against the uniform-map control.

* ``prior``: a per-LoRA region hint that biases the SoftMin instead of replacing it: the logits get
  ``hint_strength * (hint - 1)``, i.e. 0 inside the LoRA's hinted region and ``-hint_strength``
  outside (a LoRA without a hint: no bias). What a user would give as
  ``<loratorio:alice:0.8:left>`` or a mask.
* ``relative``: sharper maps early in sampling. The paper's SoftMin of ``-cos / tau`` is nearly
  uniform while every LoRA's prediction is still close to the base model's (cosines above 0.99 at
  the first steps); here each patch's divergence ``1 - cos`` is divided by the step's mean divergence
  over every LoRA and patch before the SoftMin (temperature then relative: 0.5 = a patch twice as
  divergent as the mean is e^2 ahead), so the maps are as decisive at the first step as at the last.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from lib_loratorio.composer import BranchComposer
from lib_loratorio.composition import patch_similarity, upsample_weights
from lib_loratorio.params import LoratorioParams

from . import world

RULES = ("softmin", "relative")


class RoutedComposer(BranchComposer):
    """BranchComposer whose weight maps follow ``rule`` and an optional ``prior`` [N, H, W] (log-space bias)."""

    def __init__(self, params: LoratorioParams, labels: Sequence[str], *, rule: str = "softmin",
                 prior: Optional[torch.Tensor] = None, **kwargs) -> None:
        super().__init__(params, labels, **kwargs)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
        self.rule, self.prior = rule, prior

    def _weights(self, x: torch.Tensor, base: torch.Tensor, loras: torch.Tensor) -> torch.Tensor:
        if self.prediction == "x0":
            base, loras = x - base, x.unsqueeze(0) - loras
        d, tau = self.params.patch_size, self.params.temperature
        sim = patch_similarity(loras, base, d)  # [N, B, h, w]
        if self.rule == "relative":
            divergence = 1.0 - sim
            logits = divergence / (divergence.mean(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8) * tau)
        else:
            logits = -sim / tau
        if self.prior is not None:
            height, width = base.shape[-2:]
            pad = (0, (-width) % d, 0, (-height) % d)
            prior = F.avg_pool2d(F.pad(self.prior.to(logits), pad), d)  # [N, h, w], the patch's mean bias
            logits = logits + prior.unsqueeze(1)
        return upsample_weights(logits.softmax(dim=0), d, *base.shape[-2:])


def hint_prior(comp: Sequence[str], regions, strength: float) -> torch.Tensor:
    """Log-space bias [N, H, W] for hints on the LoRAs of things (characters, clothing, objects): their
    region of ``regions`` [N, H, W] (the world's ground truth); no hint for backgrounds and styles."""
    hints = torch.as_tensor(regions, dtype=torch.float32).clone()
    for i, c in enumerate(comp):
        if world.CATEGORY_OF[c] in ("background", "style"):
            hints[i] = 1.0
    return strength * (hints - 1.0)
