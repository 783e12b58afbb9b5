"""K-LoRA, as we implemented it (Ouyang, Li, Hou, "K-LoRA: Unlocking Training-Free Fusion of Any
Subject and Style LoRAs", CVPR 2025, arXiv 2502.18461).

What the paper says (abstract, arXiv HTML v2; project page k-lora.github.io; the method as
summarised by the themoonlight.io review; the constants below from the authors' public
implementation, HVision-NKU/K-LoRA, read but not copied): training-free fusion of one subject
(content) LoRA and one style LoRA. In each attention layer and at each step only ONE of the two
LoRAs' weight updates is applied: the layer compares the sum of the K largest absolute elements of
each LoRA's update, S_c = sum TopK(|dW_c|) and S_s = sum TopK(|dW_s|). Two factors enter the
comparison: a balance factor gamma, the mean over layers of sum|dW_c| / sum|dW_s| (so that a LoRA
whose weights are larger overall does not win every layer), dividing S_c; and a time scale
alpha * p + beta multiplying S_s, where p is the fraction of the sampling done (0 at the first step),
so that the subject wins early steps, when structure forms, and the style later ones. The layer
uses the content LoRA if S_c / gamma > S_s * (alpha * p + beta), else the style LoRA. Constants:
K = 64, alpha = 1.5, beta = 0.5. Both rows of classifier-free guidance go through the same fused
model (ordinary CFG).

What we implemented:

* The choice is made for every module a LoRA of the composition targets, per module (the authors
  decide per projection: q, k, v and out separately) and per step. INFERRED: our LoRAs also adapt
  resnet convolutions and proj_in/proj_out, which the paper's attention-only LoRAs do not have; the
  rule is about a layer's weight update and nothing in it is specific to attention, so it decides
  those layers too.
* dW is the effective update ``delta.weight_delta(module)`` (alpha/rank scale included), applied
  at the run's LoRA strength.
* Extension to N LoRAs (the paper defines two): per layer, the LoRA with the largest adjusted
  top-K sum wins, where a subject LoRA's sum is divided by its gamma and a style LoRA's sum is
  multiplied by the time scale. gamma_i = mean over layers of sum|dW_i| / sum|dW_ref|; ref is the
  composition's style LoRA when it has one (which reproduces the paper's rule at N = 2), else its
  character LoRA (every composition has one), so that subject LoRAs are compared relative to their
  overall size.
* Category in our world: styles (pixelart, scanlines) are "style"; characters, clothing, objects
  and backgrounds are "subject". A composition has at most one style; without one, the time scale
  plays no part (every LoRA is a subject).
* K = 64 as in the authors' code (our layers have 2,304 to 73,728 weights, SDXL's attention
  projections 0.4 to 2.6 million, so K is a larger share of ours; option ``k``).

Cost: Merge's, two UNet rows a step (a copy of the UNet whose layer weights are swapped when the
choice changes).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from .. import world

K = 64
ALPHA = 1.5
BETA = 0.5


def top_k_sum(delta: torch.Tensor, k: int) -> float:
    """Sum of the k largest absolute elements of a weight update (all of them if it has fewer)."""
    flat = delta.detach().abs().flatten().float()
    return float(flat.topk(min(k, flat.numel())).values.sum())


def balance_factors(abs_sums: torch.Tensor, ref: int) -> torch.Tensor:
    """gamma per LoRA [N] from sum|dW| per LoRA and layer [N, L]: the mean over layers (those where
    the reference LoRA has any weight) of each LoRA's sum over the reference LoRA's."""
    ok = abs_sums[ref] > 0
    return (abs_sums[:, ok] / abs_sums[ref, ok]).mean(dim=1)


def choose(top_sums: torch.Tensor, gammas: torch.Tensor, is_style: Sequence[bool], progress: float,
           alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """Index of the LoRA each layer applies [L], from top-K sums [N, L] at ``progress`` in [0, 1)."""
    scale = alpha * progress + beta
    style = torch.tensor(list(is_style), dtype=torch.bool).unsqueeze(1)
    score = torch.where(style, top_sums * scale, top_sums / gammas.unsqueeze(1))
    return score.argmax(dim=0)


def reference_lora(concepts: Sequence[str]) -> int:
    styles = [i for i, c in enumerate(concepts) if world.CATEGORY_OF[c] == "style"]
    if styles:
        return styles[0]
    characters = [i for i, c in enumerate(concepts) if world.CATEGORY_OF[c] == "character"]
    return characters[0] if characters else 0


def run(bench, ctx) -> torch.Tensor:
    k = int(ctx.option("k", K))
    alpha, beta = float(ctx.option("alpha", ALPHA)), float(ctx.option("beta", BETA))
    concepts = ctx.concepts
    # every module any LoRA of the composition targets, and each LoRA's update there
    layers: dict[str, torch.nn.Module] = {}
    deltas: dict[str, dict[int, torch.Tensor]] = {}
    biases: dict[str, dict[int, torch.Tensor]] = {}
    for i, c in enumerate(concepts):
        for name, module, delta in bench.bound[c].targets:
            layers[name] = module
            deltas.setdefault(name, {})[i] = delta.weight_delta(module).to(module.weight.dtype)
            if delta.bias is not None and getattr(module, "bias", None) is not None:
                biases.setdefault(name, {})[i] = delta.bias
    names = list(layers)
    n = len(concepts)
    top = torch.zeros(n, len(names))
    total = torch.zeros(n, len(names))
    for j, name in enumerate(names):
        for i, d in deltas[name].items():
            top[i, j] = top_k_sum(d, k)
            total[i, j] = float(d.abs().sum())
    gammas = balance_factors(total, reference_lora(concepts))
    is_style = [world.CATEGORY_OF[c] == "style" for c in concepts]

    net = copy.deepcopy(bench.unet)
    targets = [net.get_submodule(name.split(":", 1)[-1]) for name in names]
    base_w = [m.weight.detach().clone() for m in targets]
    base_b = [m.bias.detach().clone() if getattr(m, "bias", None) is not None else None for m in targets]
    current = [-1] * len(names)
    steps = len(ctx.ts)
    shares = []

    def apply(choice: torch.Tensor) -> None:
        for j, (module, i) in enumerate(zip(targets, choice.tolist(), strict=True)):
            if i == current[j]:
                continue
            current[j] = i
            d = deltas[names[j]].get(i)
            module.weight.copy_(base_w[j] if d is None else base_w[j] + d * ctx.strength)
            if base_b[j] is not None:
                bias = biases.get(names[j], {}).get(i)
                module.bias.copy_(base_b[j] if bias is None else base_b[j] + bias * ctx.strength)

    def eps_fn(x, i, t):
        choice = choose(top, gammas, is_style, i / steps, alpha, beta)
        shares.append(torch.bincount(choice, minlength=n).float().div(len(names)).tolist())
        apply(choice)
        e = bench._unet(net, torch.cat([x, x]), t, ctx.ctx)
        return e[: ctx.b], e[ctx.b:]

    with torch.no_grad():
        x = bench._ddim(ctx.x, ctx.ts, eps_fn, ctx.cfg)
    ctx.info["klora_layer_share"] = shares  # per step, the share of layers each LoRA won
    ctx.info["klora_gamma"] = gammas.tolist()
    return x
