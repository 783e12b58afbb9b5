"""MultLFG, as we implemented it (Roy, Suin, Shah, Chellappa, "MultLFG: Training-free Multi-LoRA
composition using Frequency-domain Guidance", arXiv 2505.20525; the best published ComposLoRA
CLIPScore at N = 2).

What the paper says (abstract, arXiv HTML v1; sciencestack.ai's summary; the themoonlight.io
review's account of its Algorithm 1; the method section itself was not readable to us): like LoRA
Composite, every LoRA gives its own conditional and unconditional noise predictions at every
timestep, but instead of averaging them uniformly, the predictions are decomposed by a discrete
wavelet transform into multi-scale frequency subbands and merged per subband with adaptive weights
given to the top-k LoRAs by a relevance score, timestep-aware: low frequencies (layout,
background) matter in early steps and high frequencies (texture, edges) later. The review says
Algorithm 1 uses each LoRA's predictions at the current and the previous timestep.

What we implemented:

* Every step, each LoRA's conditional and unconditional prediction (2N rows, as LoRA Composite).
* An orthonormal 2-D Haar DWT of J = 2 levels on our 32x32 pixel-space predictions (the paper works
  on SD latents): subbands LL2, three orientation bands at level 2 and three at level 1, each
  weighted on its own.
* Relevance, INFERRED: the energy of the change of LoRA i's guided prediction u_i + cfg (c_i - u_i)
  in subband s since the previous step, ||W_s g_i(t) - W_s g_i(t_prev)||; the previous step's
  predictions are reused, no extra rows (we read "uses the previous timestep's predictions" as the
  timestep-aware signal: a LoRA whose prediction still moves in a band is the one shaping that
  band now). The first step has no previous one: uniform weights (LoRA Composite). Option
  ``score="guidance"`` instead scores the band energy of the LoRA's own guidance term c_i - u_i.
* Per subband and image, the top-k LoRAs by relevance (k = 2, an option; INFERRED) get weights
  proportional to their relevance, summing to 1; the others 0. The merged prediction is the
  inverse DWT of the weighted subbands, for the conditional and the unconditional prediction with
  the same weights, then ordinary CFG (the same as merging the guided predictions, the merge being
  linear).

Cost: 2N UNet rows a step, as LoRA Composite.
"""

from __future__ import annotations

import torch

from lib_loratorio.branch_runner import BranchRunner

LEVELS = 2
TOP_K = 2


def haar_dwt(x: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """Orthonormal 2-D Haar DWT over the last two dims: [LL_J, LH_J, HL_J, HH_J, ..., LH_1, HL_1, HH_1]."""
    details = []
    low = x
    for _ in range(levels):
        a, b = low[..., 0::2, 0::2], low[..., 0::2, 1::2]
        c, d = low[..., 1::2, 0::2], low[..., 1::2, 1::2]
        details.append([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2])
        low = (a + b + c + d) / 2
    out = [low]
    for level in reversed(details):
        out += level
    return out


def haar_idwt(bands: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`haar_dwt`."""
    low = bands[0]
    for k in range(1, len(bands), 3):
        lh, hl, hh = bands[k: k + 3]
        a = (low + lh + hl + hh) / 2
        b = (low - lh + hl - hh) / 2
        c = (low + lh - hl - hh) / 2
        d = (low - lh - hl + hh) / 2
        out = torch.empty(*low.shape[:-2], low.shape[-2] * 2, low.shape[-1] * 2, dtype=low.dtype)
        out[..., 0::2, 0::2], out[..., 0::2, 1::2], out[..., 1::2, 0::2], out[..., 1::2, 1::2] = a, b, c, d
        low = out
    return low


def band_weights(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Weights [N, ...] from relevance [N, ...]: the top-k LoRAs per entry, proportional to their
    relevance and summing to 1 (uniform over them where their relevance is all zero)."""
    n = scores.shape[0]
    k = max(1, min(k, n))
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(0, scores.topk(k, dim=0).indices, True)
    kept = torch.where(keep, scores.clamp_min(0), torch.zeros_like(scores))
    total = kept.sum(dim=0, keepdim=True)
    uniform = keep.float() / k
    return torch.where(total > 0, kept / total.clamp_min(1e-12), uniform)


def merge(preds: torch.Tensor, weights: list[torch.Tensor], levels: int = LEVELS) -> torch.Tensor:
    """Predictions [N, B, C, H, W] merged per subband with weights[s] [N, B] -> [B, C, H, W]."""
    bands = haar_dwt(preds, levels)
    merged = [(w.view(*w.shape, 1, 1, 1) * band).sum(dim=0) for w, band in zip(weights, bands, strict=True)]
    return haar_idwt(merged)


def band_energy(x: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """L2 norm per subband over channels and positions: [N, B, C, H, W] -> list of [N, B]."""
    return [band.flatten(2).norm(dim=-1) for band in haar_dwt(x, levels)]


def run(bench, ctx) -> torch.Tensor:
    n, b = len(ctx.concepts), ctx.b
    k = int(ctx.option("k", TOP_K))
    score_kind = ctx.option("score", "change")
    levels = int(ctx.option("levels", LEVELS))
    previous: dict[str, torch.Tensor] = {}
    branches = torch.tensor([i + 1 for i in range(n) for _ in range(2 * b)])
    ctx_rows = ctx.ctx.repeat(n, 1, 1)

    def eps_fn(x, i, t):
        with runner.rows(branches):
            e = bench._unet(bench.unet, torch.cat([x, x]).repeat(n, 1, 1, 1), t, ctx_rows)
        e = e.view(n, 2 * b, *e.shape[1:])
        cond, uncond = e[:, :b], e[:, b:]
        guided = uncond + ctx.cfg * (cond - uncond)
        if score_kind == "guidance":
            scores = band_energy(cond - uncond, levels)
        elif "guided" in previous:
            scores = band_energy(guided - previous["guided"], levels)
        else:
            scores = None
        previous["guided"] = guided
        if scores is None:
            weights = [torch.full((n, b), 1.0 / n)] * (1 + 3 * levels)
        else:
            weights = [band_weights(s, k) for s in scores]
        return merge(cond, weights, levels), merge(uncond, weights, levels)

    loras = [bench.bound[c] for c in ctx.concepts]
    with BranchRunner(loras, [ctx.strength] * n) as runner, torch.no_grad():
        x = bench._ddim(ctx.x, ctx.ts, eps_fn, ctx.cfg)
    return x
