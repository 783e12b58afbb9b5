"""FreeFuse-style masks, as we implemented them (Liu, Ding, Zhou, "FreeFuse: Multi-Subject LoRA Fusion
via Auto Masking at Test Time", arXiv 2510.23515).

What the paper says (abstract, arXiv HTML v1 and v2; project page future-item.github.io/FreeFuse;
the themoonlight.io review's account of the mask stage; the hyper-parameters the authors' ComfyUI
nodes expose, from their README): the user gives only each subject LoRA's activation (trigger)
words. Stage 1 runs the sampler up to one early step and reads, at a single attention block, the
cross-attention between the image tokens and each LoRA's trigger tokens; the raw maps are cleaned
(attention-sink handling: of the top-k attention values, those on the image border are dropped),
turned into a similarity of every image token to the tokens that attend most to the trigger
(self-attention locality; a top-k ratio and a softmax temperature), and each image token goes to
one subject (a balanced argmax). Stage 2 samples again from the same noise with each LoRA's output
multiplied by its mask, which the paper shows approximates each LoRA used alone in its region.

What we implemented:

* Stage 1 (INFERRED choices marked): DDIM from the run's noise up to step ``mask_step`` with every
  LoRA merged at the run's strength. The authors' nodes recommend LoRAs off in stage 1; our base
  model never saw the trigger words (they are untrained tokens to it), so only the LoRAs' own
  keys and values make a trigger token attend anywhere (INFERRED, a necessary deviation). At that
  step the cross-attention of the ``block``'s transformer (the tiny UNet has cross-attention only
  at 8x8) is read for the conditional rows: probabilities averaged over heads, the column of each
  LoRA's trigger token (our prompt is the triggers joined by ", ", one token each).
* Similarity: the ``top_k_ratio`` (0.1: 6 of 64) image tokens that attend most to a trigger; their
  mean input feature to the cross-attention is that LoRA's prototype; every image token's cosine
  similarity to each prototype; each token to the LoRA of highest similarity (a plain argmax;
  INFERRED, the balancing iterations are not specified to us). Option ``similarity=False`` takes
  the argmax of the attention maps themselves (each divided by its maximum).
* Attention-sink handling is off by default (option ``sink``): at 8x8 the border is 28 of 64
  tokens and our world puts the sun and the tree in corners; nothing like an attention sink shows
  in this tiny model's maps.
* Which LoRAs are masked: FreeFuse is defined for subject LoRAs; a style is not a region. INFERRED:
  style LoRAs act everywhere (mask 1); characters, clothing, objects and backgrounds compete in
  the argmax (a background LoRA takes the tokens that attend to its trigger most, like FreeFuse's
  background text).
* Stage 2: sampling again from the same noise, every row (conditional and unconditional) a
  BranchRunner MIXED row with the masks (8x8 upsampled to 32x32, nearest), ordinary CFG (the paper
  does not change guidance), each cross-attention computed once per LoRA and blended by the masks
  so that a LoRA keeps its own keys and values inside its mask (the authors' nodes leave the key
  and value changes, which act on the text, unmasked): see ``masked.py`` for both, and its options
  ``attention_per_lora`` and ``uncond``.

Defaults ``block`` and ``mask_step`` were chosen on 12 dev compositions x 2 seeds by the masks'
mean IoU with the oracle regions (``mask_quality``), over the three 8x8 cross-attention blocks, steps
0/1/3/6/10 of 20, prototype similarity or raw maps: the mid block at step 1 with the similarity,
0.246, within noise of the best cell (down block, raw maps, 0.253). That is barely above chance:
a random argmax scores 0.184 and every LoRA everywhere 0.309. This tiny model's cross-attention to a
trigger token is nearly uniform over the 8x8 grid (its LoRAs draw their concepts mostly through the
convolutions), so on this benchmark the masks carry little of where a concept is; a limit of the
benchmark's model for this peer, not a property of the paper's SD/Flux setting.

Cost: 2 (mask_step + 1) stage-1 rows plus 2 rows a step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import world
from ..model import VOCAB, tokenize
from .masked import sample_with_masks

BLOCK = "mid_block.attentions.0"
MASK_STEP = 1
TOP_K_RATIO = 0.1


def trigger_positions(prompt: str, concepts) -> list[int]:
    """Token index of each concept's trigger word in ``prompt``."""
    ids = tokenize([prompt])[0].tolist()
    out = []
    for c in concepts:
        token = VOCAB.index(c)
        if token not in ids:
            raise ValueError(f"trigger {c!r} is not in the prompt {prompt!r}")
        out.append(ids.index(token))
    return out


class AttentionProbe:
    """Records, on its next call, a cross-attention's probabilities [rows, heads, image, text] and the
    image tokens' input features [rows, image, C], through forward hooks on its q and k projections."""

    def __init__(self, attention: torch.nn.Module) -> None:
        self.attention = attention
        self.armed = False
        self.probs = self.features = None
        self._q = None
        self._handles = [attention.to_q.register_forward_hook(self._on_q),
                         attention.to_k.register_forward_hook(self._on_k)]

    def _on_q(self, module, args, output):
        if self.armed:
            self.features, self._q = args[0].detach(), output.detach()

    def _on_k(self, module, args, output):
        if not self.armed:
            return
        heads = self.attention.heads
        q, k = self._q, output.detach()
        rows, n_img, width = q.shape
        q = q.view(rows, n_img, heads, width // heads).transpose(1, 2)
        k = k.view(rows, k.shape[1], heads, width // heads).transpose(1, 2)
        self.probs = (q @ k.transpose(-1, -2) * self.attention.scale).softmax(dim=-1)
        self.armed = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def masks_from_attention(probs: torch.Tensor, features: torch.Tensor, positions: list[int], masked: list[bool],
                         *, top_k_ratio: float = TOP_K_RATIO, similarity: bool = True,
                         sink: bool = False) -> torch.Tensor:
    """Masks [N, h, w] on the attention grid for one image.

    probs [heads, h*w, text], features [h*w, C]; ``masked[i]`` False: LoRA i acts everywhere
    (mask 1); the others share the tokens, each token to one of them.
    """
    attn = probs.mean(dim=0)                                    # [tokens, text]
    n_tokens = attn.shape[0]
    side = int(round(n_tokens ** 0.5))
    maps = attn[:, positions].T.clone()                         # [N, tokens]
    k = max(1, int(round(top_k_ratio * n_tokens)))
    if sink:  # the top-k values that sit on the border are taken as attention sinks and dropped
        border = torch.zeros(side, side, dtype=torch.bool)
        border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
        top = torch.zeros_like(maps, dtype=torch.bool).scatter_(1, maps.topk(k, dim=1).indices, True)
        maps = torch.where(top & border.flatten(), torch.zeros_like(maps), maps)
    if similarity:
        idx = maps.topk(k, dim=1).indices                         # [N, k]
        protos = features[idx].mean(dim=1)                        # [N, C]
        scores = F.normalize(protos, dim=-1) @ F.normalize(features, dim=-1).T  # [N, tokens]
    else:
        scores = maps / maps.amax(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.ones(len(positions), n_tokens)
    competing = [i for i, m in enumerate(masked) if m]
    if competing:
        winner = scores[competing].argmax(dim=0)
        for j, i in enumerate(competing):
            out[i] = (winner == j).float()
    return out.view(len(positions), side, side)


def stage_one(bench, ctx, block: str, mask_step: int):
    """Run DDIM with every LoRA merged up to ``mask_step`` and read the block's cross-attention there:
    (probs [b, heads, tokens, text], features [b, tokens, C])."""
    net = bench.merged_unet(ctx.concepts, ctx.strength)
    probe = AttentionProbe(net.get_submodule(f"{block}.transformer_blocks.0.attn2"))
    steps = ctx.ts[: mask_step + 1]

    def eps_fn(x, i, t):
        probe.armed = i == len(steps) - 1
        e = bench._unet(net, torch.cat([x, x]), t, ctx.ctx)
        return e[: ctx.b], e[ctx.b:]
    try:
        bench._ddim(ctx.x, steps, eps_fn, ctx.cfg)
    finally:
        probe.remove()
    return probe.probs[: ctx.b], probe.features[: ctx.b]


def compute_masks(bench, ctx) -> torch.Tensor:
    """FreeFuse-style masks [b, N, H, W] for the context's images (runs stage 1)."""
    block = ctx.option("block", BLOCK)
    mask_step = min(int(ctx.option("mask_step", MASK_STEP)), len(ctx.ts) - 1)
    probs, features = stage_one(bench, ctx, block, mask_step)
    positions = trigger_positions(ctx.prompt, ctx.concepts)
    masked = [world.CATEGORY_OF[c] != "style" for c in ctx.concepts]
    small = torch.stack([masks_from_attention(p, f, positions, masked,
                                              top_k_ratio=float(ctx.option("top_k_ratio", TOP_K_RATIO)),
                                              similarity=bool(ctx.option("similarity", True)),
                                              sink=bool(ctx.option("sink", False)))
                         for p, f in zip(probs, features, strict=True)])
    return F.interpolate(small, size=(world.SIZE, world.SIZE), mode="nearest")


def run(bench, ctx) -> torch.Tensor:
    masks = compute_masks(bench, ctx)
    ctx.info["freefuse_mask_share"] = masks.mean(dim=(0, 2, 3)).tolist()
    return sample_with_masks(bench, ctx, ctx.x, masks)


def mask_quality(masks: torch.Tensor, concepts, region_masks=None) -> float:
    """Mean over the masked (non-style) LoRAs of the IoU of ``masks`` [b, N, H, W] with the oracle regions
    (``region_masks``: the world's, by default the single-figure world's)."""
    from ..regions import region_masks as solo_regions
    truth = torch.from_numpy((region_masks or solo_regions)(concepts)) > 0.5
    ious = []
    for i, c in enumerate(concepts):
        if world.CATEGORY_OF[c] == "style":
            continue
        m = masks[:, i] > 0.5
        inter = (m & truth[i]).flatten(1).sum(1).float()
        union = (m | truth[i]).flatten(1).sum(1).float().clamp_min(1)
        ious.append((inter / union).mean())
    return float(torch.stack(ious).mean()) if ious else float("nan")
