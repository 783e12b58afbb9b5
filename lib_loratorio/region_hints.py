"""Region hints: where the user wants a LoRA to act, as a soft prior on LoRAtorio's weight maps.

A hint does not replace the routing: in the SoftMin over LoRAs each hinted LoRA's logit is lowered by
the *Region hint strength* outside its region (0 inside), so a hinted LoRA still competes with the
others inside its region (a background or style LoRA keeps the patches where it diverges most) and
all but disappears outside it. LoRAs without a hint get no bias.

A hint is written in a tag (``<loratorio:alice:0.8:left>``) as a named region or a box of fractions
of the image, ``x0,y0,x1,y1`` (``0,0,0.5,1`` is the left half); ComfyUI gives a MASK instead. On the
latent grid a region covers the latent pixels whose centre lies in it; a mask is area-averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import InvalidParameterError

#: Named regions: (x0, y0, x1, y1) as fractions of the image's width and height.
NAMED_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5), "bottom": (0.0, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
    "top-left": (0.0, 0.0, 0.5, 0.5), "top-right": (0.5, 0.0, 1.0, 0.5),
    "bottom-left": (0.0, 0.5, 0.5, 1.0), "bottom-right": (0.5, 0.5, 1.0, 1.0),
    "left-third": (0.0, 0.0, 1 / 3, 1.0), "middle-third": (1 / 3, 0.0, 2 / 3, 1.0),
    "right-third": (2 / 3, 0.0, 1.0, 1.0),
}
_ALIASES = {"centre": "center", "middle": "center"}
FORMS = (f"a named region ({', '.join(NAMED_REGIONS)}) or a box of fractions x0,y0,x1,y1 "
         "(0,0,0.5,1 is the left half)")


@dataclass(frozen=True)
class Box:
    """A rectangle in fractions of the image: x0 <= x < x1, y0 <= y < y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    def mask(self, height: int, width: int) -> torch.Tensor:
        """[height, width] float in {0, 1}: the grid cells whose centre lies in the box."""
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
        inside_y = (ys >= self.y0) & (ys < self.y1)
        inside_x = (xs >= self.x0) & (xs < self.x1)
        return (inside_y[:, None] & inside_x[None, :]).float()


@dataclass(frozen=True, eq=False)
class MaskHint:
    """A mask at any resolution ([H, W], values in [0, 1]), e.g. a ComfyUI MASK."""

    values: torch.Tensor

    def mask(self, height: int, width: int) -> torch.Tensor:
        """[height, width]: the mask area-averaged to the grid (an image-size mask onto the latent grid)."""
        m = self.values.detach().float().cpu()[None, None]
        return F.interpolate(m, (height, width), mode="area")[0, 0].clamp(0, 1)


Hint = Union[Box, MaskHint]


def parse_region(text: str) -> Box:
    """A region as a tag writes it; InvalidParameterError naming the forms when it is neither."""
    key = text.strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key in NAMED_REGIONS:
        return Box(*NAMED_REGIONS[key])
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise InvalidParameterError(f"'{text}' is no region: write {FORMS}.") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise InvalidParameterError(
            f"The region box '{text}' is empty or leaves the image: it needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
            "(x0,y0,x1,y1 as fractions of the width and height).")
    return Box(x0, y0, x1, y1)


def hint_prior(hints: Sequence[Optional[Hint]], strength: float, height: int, width: int) -> Optional[torch.Tensor]:
    """Log-space bias [N, height, width] for the SoftMin: 0 inside a hinted LoRA's region, ``-strength`` outside
    it (a mask's values in between: linearly), 0 everywhere for a LoRA without a hint. None when no LoRA has a
    hint or the strength is 0."""
    if strength == 0 or all(h is None for h in hints):
        return None
    maps = [torch.ones(height, width) if h is None else h.mask(height, width) for h in hints]
    return strength * (torch.stack(maps) - 1.0)
