"""The LoRAtorio composition step and the baselines it is compared with.

Foteinopoulou, Budvytis, Liwicki, "LoRAtorio: An intrinsic approach to LoRA Skill Composition"
(arXiv 2508.11624); docs/METHOD.md describes the method as implemented here. Per d x d latent
patch, each LoRA branch's conditional prediction is compared with the base model's (cosine
similarity over channels and pixels); a SoftMin over LoRAs turns the similarities into weights (the
most divergent LoRA owns the patch); the branches are blended with those weights, and the
unconditional prediction is re-centred on the base model's.

Every blend is convex per pixel, so the functions work on eps, v or x0 predictions alike. The
similarity, however, must see something proportional to eps: callers holding x0 ("denoised")
pass ``x - denoised`` to :func:`patch_weights` and blend the denoised tensors themselves.

Shapes: base [B, C, H, W]; branches stacked [N, B, C, H, W]; weights [N, B, H, W].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import reduce

from .choices import Selection
from .errors import InvalidParameterError, NonFiniteError

# Norm floor for the cosine: keeps an all-zero patch finite (its similarity is then 0).
_EPS = 1e-8


@dataclass
class CompositionResult:
    cond: torch.Tensor
    uncond: Optional[torch.Tensor]
    weights: torch.Tensor


BASE_MODEL = "The base model"


def check_finite(tensor: torch.Tensor | None, who: str, kind: str) -> None:
    """Raise NonFiniteError naming the branch instead of letting NaN become a black image.

    who: the branch as a message names it (``BASE_MODEL`` or a LoRA's label); kind: "conditional"
    or "unconditional".
    """
    if tensor is not None and not bool(torch.isfinite(tensor).all()):
        raise _non_finite(who, kind)


def check_branches_finite(stack: torch.Tensor | None, labels: Sequence[str], kind: str) -> None:
    """check_finite for LoRA branches stacked [N, ...]; ``labels[i]`` names branch i in the message."""
    if stack is None:
        return
    finite = torch.isfinite(stack).flatten(1).all(dim=1)
    if not bool(finite.all()):
        raise _non_finite(labels[int((~finite).nonzero()[0])], kind)


def _non_finite(who: str, kind: str) -> NonFiniteError:
    if who == BASE_MODEL:
        fix = "Run the model in a higher precision (e.g. --no-half) or check the LoRAs merged into it."
    else:
        fix = "Lower its strength, check the file, or run the model in a higher precision (e.g. --no-half)."
    return NonFiniteError(f"{who} produced NaN or inf in its {kind} prediction. {fix}")


def patch_similarity(branches: torch.Tensor, base: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cosine similarity of each branch to the base per patch: [N,B,C,H,W], [B,C,H,W] -> [N,B,h,w].

    h = ceil(H / d), w = ceil(W / d). Zero padding of partial border patches adds nothing to the
    dot product or the norms, so those patches are compared over the pixels they really have.
    Computed in float32 whatever the inputs' dtype.
    """
    d = patch_size
    height, width = base.shape[-2:]
    pad = (0, (-width) % d, 0, (-height) % d)
    a = F.pad(branches.float(), pad)
    b = F.pad(base.float(), pad).unsqueeze(0)
    pattern = "n b c (h p) (w q) -> n b h w"
    dot = reduce(a * b, pattern, "sum", p=d, q=d)
    norm_a = reduce(a * a, pattern, "sum", p=d, q=d).sqrt()
    norm_b = reduce(b * b, pattern, "sum", p=d, q=d).sqrt()
    return dot / (norm_a * norm_b).clamp_min(_EPS)


def softmin_weights(
    similarity: torch.Tensor,
    temperature: float,
    top_k: Optional[int] = None,
    selection: Selection = Selection.PATCH,
    prior: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SoftMin over the LoRA axis (dim 0) of per-patch similarities [N,B,h,w] -> weights.

    ``top_k`` keeps only the k most divergent (lowest similarity) LoRAs before the SoftMin: per
    patch, or (``selection="global"``) ranked by the mean similarity over the whole image.
    ``prior`` [N, h, w] is added to the logits (a log-space bias: region hints, see region_hints.py).
    """
    if not temperature > 0:
        raise InvalidParameterError(f"temperature={temperature} is invalid: it must be > 0.")
    if selection not in Selection.values():
        raise InvalidParameterError(f"selection={selection!r} is invalid: use one of {Selection.values()}.")
    logits = -similarity.float() / temperature
    if prior is not None:
        logits = logits + prior.to(logits).unsqueeze(1)
    n = similarity.shape[0]
    if top_k is not None and 0 < top_k < n:
        if selection == Selection.PATCH:
            keep_idx = similarity.topk(top_k, dim=0, largest=False).indices
        else:
            mean = reduce(similarity, "n b h w -> n b 1 1", "mean")
            keep_idx = mean.topk(top_k, dim=0, largest=False).indices.expand(-1, -1, *similarity.shape[2:])
        keep = torch.zeros_like(similarity, dtype=torch.bool).scatter_(0, keep_idx, True)
        logits = logits.masked_fill(~keep, -math.inf)
    return logits.softmax(dim=0)


def patch_means(values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[..., H, W] -> [..., h, w]: each patch's mean over the pixels it has (partial border patches too)."""
    d = patch_size
    height, width = values.shape[-2:]
    pad = (0, (-width) % d, 0, (-height) % d)
    pattern = "... (h p) (w q) -> ... h w"
    total = reduce(F.pad(values.float(), pad), pattern, "sum", p=d, q=d)
    count = reduce(F.pad(torch.ones_like(values[..., :, :], dtype=torch.float32), pad), pattern, "sum", p=d, q=d)
    return total / count


def upsample_weights(weights: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Nearest upsampling [N,B,h,w] -> [N,B,H,W]: each patch weight covers its d x d pixels."""
    d = patch_size
    full = weights.repeat_interleave(d, dim=-2).repeat_interleave(d, dim=-1)
    return full[..., :height, :width]


def patch_weights(
    branches: torch.Tensor,
    base: torch.Tensor,
    *,
    patch_size: int,
    temperature: float,
    top_k: Optional[int] = None,
    selection: Selection = Selection.PATCH,
    prior: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Full-resolution LoRAtorio weights [N,B,H,W] (float32, summing to 1 over N per pixel).

    ``prior`` [N, H, W]: a log-space bias on the latent grid (region hints), averaged over each patch.
    """
    if patch_size < 1:
        raise InvalidParameterError(f"patch_size={patch_size} is invalid: it must be >= 1.")
    sim = patch_similarity(branches, base, patch_size)
    if prior is not None:
        prior = patch_means(prior, patch_size)
    weights = softmin_weights(sim, temperature, top_k, selection, prior)
    return upsample_weights(weights, patch_size, *base.shape[-2:])


def blend(weights: torch.Tensor, branches: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_i W_i * branch_i, weights [N,B,H,W] broadcast over channels; result in branches' dtype.

    With ``base``: base + sum_i W_i * (branch_i - base), each LoRA's change added at its weight (the
    same as the plain blend when the weights sum to 1; needed when they do not, see owner_weights).
    """
    if base is None:
        out = (weights.unsqueeze(2) * branches.float()).sum(dim=0)
    else:
        out = base.float() + (weights.unsqueeze(2) * (branches.float() - base.float().unsqueeze(0))).sum(dim=0)
    return out.to(branches.dtype)


def owner_weights(weights: torch.Tensor) -> torch.Tensor:
    """Weights divided by the largest of each pixel [N,B,H,W]: the patch's owner acts at full strength,
    the others at their share of the owner's weight.

    The paper's weights sum to 1, so a patch whose owner has weight 0.6 gets 0.6 of its LoRA's change,
    where stacking LoRAs gives all of it; and where no LoRA stands out (uniform weights), each LoRA
    gets 1/N. Rescaled, a clear owner acts fully and undecided patches get every LoRA fully, as a
    plain <lora> stack would. Use with blend(..., base=...).
    """
    return weights / weights.amax(dim=0, keepdim=True).clamp_min(_EPS)


def recentred_uncond(
    weights: torch.Tensor,
    base_uncond: torch.Tensor,
    lora_uncond: Optional[torch.Tensor],
    recenter: float,
    relative: bool = False,
) -> torch.Tensor:
    """recenter * base_uncond + (1 - recenter) * sum_i W_i lora_uncond_i.

    With recenter == 1 the LoRA unconditional predictions are not needed (the N+2 fast mode).
    ``relative``: the LoRA part is blended as changes from base_uncond (blend(..., base=...)).
    """
    if not 0.0 <= recenter <= 1.0:
        raise InvalidParameterError(f"recenter={recenter} is invalid: it must be in [0, 1].")
    if recenter == 1.0:
        return base_uncond
    if lora_uncond is None:
        raise InvalidParameterError(
            f"recenter={recenter} needs the LoRA branches' unconditional predictions; "
            "pass lora_uncond or use recenter=1."
        )
    loras = blend(weights, lora_uncond, base_uncond if relative else None).float()
    mixed = recenter * base_uncond.float() + (1.0 - recenter) * loras
    return mixed.to(base_uncond.dtype)


def compose(
    base_cond: torch.Tensor,
    base_uncond: Optional[torch.Tensor],
    lora_cond: torch.Tensor,
    lora_uncond: Optional[torch.Tensor],
    *,
    patch_size: int,
    temperature: float,
    recenter: float = 0.5,
    top_k: Optional[int] = None,
    selection: Selection = Selection.PATCH,
) -> CompositionResult:
    """One LoRAtorio step on noise predictions (docs/METHOD.md, steps 3-7).

    base_uncond None (guidance-distilled models): only the conditional composition is returned.
    """
    if lora_cond.dim() != 5 or lora_cond.shape[1:] != base_cond.shape:
        raise InvalidParameterError(
            f"lora_cond must be [N, *base_cond.shape] = [N, {', '.join(map(str, base_cond.shape))}], "
            f"got {list(lora_cond.shape)}."
        )
    labels = [f"LoRA branch {i + 1}" for i in range(lora_cond.shape[0])]
    check_finite(base_cond, BASE_MODEL, "conditional")
    check_finite(base_uncond, BASE_MODEL, "unconditional")
    check_branches_finite(lora_cond, labels, "conditional")
    if base_uncond is not None and recenter < 1.0:
        check_branches_finite(lora_uncond, labels, "unconditional")
    weights = patch_weights(
        lora_cond, base_cond, patch_size=patch_size, temperature=temperature, top_k=top_k, selection=selection
    )
    cond = blend(weights, lora_cond)
    uncond = None
    if base_uncond is not None:
        uncond = recentred_uncond(weights, base_uncond, lora_uncond, recenter)
    return CompositionResult(cond=cond, uncond=uncond, weights=weights)


def composite(lora_cond: torch.Tensor, lora_uncond: Optional[torch.Tensor] = None) -> CompositionResult:
    """The "LoRA Composite" baseline: uniform mean of the LoRA branches, no base model."""
    n = lora_cond.shape[0]
    weights = torch.full((n, lora_cond.shape[1], *lora_cond.shape[-2:]), 1.0 / n, device=lora_cond.device)
    cond = blend(weights, lora_cond)
    uncond = blend(weights, lora_uncond) if lora_uncond is not None else None
    return CompositionResult(cond=cond, uncond=uncond, weights=weights)


def switch_branch(step: int, n_loras: int, every: int) -> int:
    """The "LoRA Switch" baseline: index (0-based) of the single LoRA active at sampling step ``step``."""
    if every < 1:
        raise InvalidParameterError(f"switch_every={every} is invalid: it must be >= 1.")
    return (step // every) % n_loras
