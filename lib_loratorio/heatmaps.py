"""Weight maps as pictures: one heatmap per LoRA, blended over the generated image (torch only)."""

from __future__ import annotations

import torch

from .weight_masks import upsampled

# A perceptually ordered dark-blue -> red -> yellow ramp (close to "inferno"), as RGB 0..1 stops.
_STOPS = torch.tensor([
    [0.00, 0.00, 0.02], [0.26, 0.04, 0.41], [0.58, 0.15, 0.40], [0.87, 0.32, 0.23],
    [0.99, 0.64, 0.04], [0.99, 1.00, 0.64],
])


def colorize(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1], shape [h, w] -> RGB [h, w, 3] in [0, 1] along the ramp."""
    v = values.float().clamp(0, 1) * (len(_STOPS) - 1)
    low = v.floor().long().clamp(max=len(_STOPS) - 2)
    frac = (v - low).unsqueeze(-1)
    return _STOPS[low] * (1 - frac) + _STOPS[low + 1] * frac


def overlay(weights: torch.Tensor, image: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Blend the heatmap of one LoRA's weights [h, w] (latent size) over image [H, W, 3] uint8.

    The map is upsampled with nearest neighbours so patch borders stay visible, as the method
    assigns weights per patch.
    """
    height, width = image.shape[:2]
    heat = colorize(upsampled(weights, height, width))
    mixed = alpha * heat + (1 - alpha) * image.float() / 255
    return (mixed * 255).round().clamp(0, 255).to(torch.uint8)
