"""Sampling with every LoRA's change confined to a per-image spatial mask (FreeFuse-style and oracle masks).

Every row, conditional and unconditional, is a BranchRunner MIXED row: each LoRA's change at every
layer is scaled by its mask at that layer's resolution (lib_loratorio.layer_maps; cross-attention
keys and values, which act on the text, by the mask's mean). The same masks serve both rows of
CFG, as a user's masks do on a LoRA-patched model. Two UNet rows a step.
"""

from __future__ import annotations

import torch

from lib_loratorio.branch_runner import MIXED, BranchRunner


def sample_with_masks(bench, ctx, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """DDIM from ``x`` with ``masks`` [b, N, H, W] (one set per image) on every row."""
    n, b = len(ctx.concepts), ctx.b
    if masks.shape[:2] != (b, n):
        raise ValueError(f"masks {tuple(masks.shape)} do not match {b} images x {n} LoRAs")
    maps = torch.cat([masks, masks]).float()
    branches = torch.full((2 * b,), MIXED, dtype=torch.long)

    def eps_fn(x, i, t):
        with runner.rows(branches, maps=maps):
            e = bench._unet(bench.unet, torch.cat([x, x]), t, ctx.ctx)
        return e[:b], e[b:]

    loras = [bench.bound[c] for c in ctx.concepts]
    with BranchRunner(loras, [ctx.strength] * n) as runner, torch.no_grad():
        return bench._ddim(x, ctx.ts, eps_fn, ctx.cfg)
