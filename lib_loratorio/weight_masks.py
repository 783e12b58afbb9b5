"""Weight maps as masks and shares: what the next tool (an inpaint pass, a detailer, another extension) takes from them.

A run's weight maps are [N, h, w] at the latent's resolution: in the routing modes each LoRA's SoftMin weight, patch
by patch (the N weights of a pixel sum to 1); in Stack the factor each LoRA acts with (1 everywhere without region
hints, e^-strength outside a hint's region). Here they become masks at an image's resolution (optionally thresholded
and feathered), and a region's *shares*: each LoRA's mean weight over the region, the weights of each pixel taken
relative to their sum, so that the shares sum to 1; and the region's *owners*, the LoRAs whose share is close enough
to the largest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def upsampled(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Maps [..., h, w] at ``height`` x ``width`` pixels, nearest neighbour: each latent pixel's weight covers the
    image pixels it was decoded to, so patch borders stay where the composition put them."""
    lead = maps.shape[:-2]
    flat = maps.float().reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=(height, width), mode="nearest").reshape(*lead, height, width)


def weight_masks(maps: torch.Tensor, height: int, width: int, *, threshold: float = 0.0,
                 blur: float = 0.0) -> torch.Tensor:
    """One mask per LoRA [N, height, width] in 0..1 from maps [N, h, w].

    ``threshold`` 0 keeps the weights as they are (a soft mask); above 0, a pixel is 1 where the LoRA's weight
    is at least ``threshold`` and 0 elsewhere. ``blur``: the standard deviation in pixels of a Gaussian that
    feathers the mask's edges (0: none).
    """
    masks = upsampled(maps, height, width).clamp(0, 1)
    if threshold > 0:
        masks = (masks >= threshold).float()
    if blur > 0:
        masks = gaussian_blur(masks, blur)
    return masks


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` [..., H, W] blurred by a Gaussian of ``sigma`` pixels, edges extended (not darkened)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    lead, (height, width) = images.shape[:-2], images.shape[-2:]
    x = images.float().reshape(-1, 1, height, width)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.reshape(*lead, height, width)


def pixel_shares(maps: torch.Tensor) -> torch.Tensor:
    """Maps [N, h, w] with each pixel's weights divided by their sum (a pixel where every weight is 0 stays 0)."""
    maps = maps.float()
    total = maps.sum(dim=0, keepdim=True)
    return torch.where(total > 0, maps / total.clamp_min(1e-12), torch.zeros_like(maps))


def region_shares(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Each LoRA's share of ``region`` [H, W] (0..1, e.g. a detector's mask at the image's size): its weight
    relative to the pixel's sum (``pixel_shares``), averaged over the region, pixels counted by their mask value.
    [N]; the shares sum to 1 (all zero for an empty region)."""
    weights = upsampled(pixel_shares(maps), *region.shape[-2:])
    region = region.float().clamp(0, 1)
    total = float(region.sum())
    if total <= 0:
        return torch.zeros(maps.shape[0])
    return (weights * region).flatten(1).sum(dim=1) / total


def owners(shares: torch.Tensor, min_ratio: float) -> list[int]:
    """The LoRAs (indices, in order) whose share is at least ``min_ratio`` times the largest share: 1 keeps the
    leading LoRA(s) only, 0 every LoRA. Equal shares (uniform maps: no LoRA leads anywhere) make every LoRA an
    owner. A region has at least one owner unless every share is 0."""
    if not bool((shares > 0).any()):
        return []
    least = min_ratio * float(shares.max())
    return [i for i, share in enumerate(shares.tolist()) if share >= least * (1 - 1e-6)]


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats numbered ("alice", "alice (2)"), so that they can key a dict."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out
