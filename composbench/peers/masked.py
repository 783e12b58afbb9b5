"""Sampling with every LoRA's change confined to a per-image spatial mask (FreeFuse-style and oracle masks).

The conditional rows are BranchRunner MIXED rows: each LoRA's change at every layer is scaled by
its mask at that layer's resolution (lib_loratorio.layer_maps; masks area-averaged to the coarser
layers). Cross-attention: by default (``attention_per_lora`` True) each cross-attention is
computed once per LoRA, with that LoRA's own query, key, value and output changes, and the outputs
are blended by the masks, so that inside its mask a LoRA attends to the text with its own keys and
values at full strength, as if it were used alone there (what FreeFuse's analysis approximates; the
authors' nodes likewise leave the key and value changes, which act on the text, unmasked). With
False the runner's default rule applies: query and output changes per pixel, key and value
changes at the mask's mean, i.e. a sun LoRA whose mask is 7 % of the image changes its keys and
values at 7 % strength.

Unconditional rows (option ``uncond``): "masked" (default) = ordinary CFG with the same masked
LoRAs, as a user's masks act on a LoRA-patched model; "base" = the base model's unconditional
prediction (LoRAtorio's re-centring 1), a control that separates routing from guidance.
Two UNet rows a step either way.
"""

from __future__ import annotations

import torch

from lib_loratorio.branch_runner import MIXED, BranchRunner

from ..attention_per_lora import AttentionPerLoraRunner


def sample_with_masks(bench, ctx, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """DDIM from ``x`` with ``masks`` [b, N, H, W] (one set per image); options as the module says."""
    n, b = len(ctx.concepts), ctx.b
    if masks.shape[:2] != (b, n):
        raise ValueError(f"masks {tuple(masks.shape)} do not match {b} images x {n} LoRAs")
    uncond = ctx.option("uncond", "masked")
    if uncond not in ("masked", "base"):
        raise ValueError(f"uncond={uncond!r}: use 'masked' or 'base'")
    if uncond == "masked":
        maps = torch.cat([masks, masks]).float()
        branches = torch.full((2 * b,), MIXED, dtype=torch.long)
    else:  # base rows first (branch 0), then the mixed rows: two slices, as the runner prefers
        maps = masks.float()
        branches = torch.cat([torch.zeros(b, dtype=torch.long), torch.full((b,), MIXED, dtype=torch.long)])
    ctx_rows = ctx.ctx if uncond == "masked" else torch.cat([ctx.ctx[b:], ctx.ctx[:b]])

    def eps_fn(x, i, t):
        with runner.rows(branches, maps=maps):
            e = bench._unet(bench.unet, torch.cat([x, x]), t, ctx_rows)
        return (e[:b], e[b:]) if uncond == "masked" else (e[b:], e[:b])

    loras = [bench.bound[c] for c in ctx.concepts]
    per_lora = bool(ctx.option("attention_per_lora", True))
    runner_class = AttentionPerLoraRunner if per_lora else BranchRunner
    with runner_class(loras, [ctx.strength] * n) as runner, torch.no_grad():
        return bench._ddim(x, ctx.ts, eps_fn, ctx.cfg)
