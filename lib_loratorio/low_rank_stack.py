"""Several LoRAs' low-rank deltas on one layer, applied together with per-LoRA spatial weights.

The fast mode's mixed rows add ``sum_i w_i(p) * s_i * up_i(down_i(x))(p)`` at every output position
p. Since w_i(p) is one number per LoRA and position, it can scale LoRA i's rank-space features
before the up-projection, so all LoRAs of a layer go through one down-projection of their stacked
factors and one up-projection: two kernels per layer instead of a few per LoRA, which is what keeps
a mixed step close to a plain step's cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lora_layers import LowRank, _conv, weight_shape


def stackable(delta: object, layer: nn.Module) -> bool:
    """Plain LoRA/LoCon factors (no Tucker mid, no bias) on a linear or ungrouped conv layer."""
    return (type(delta) is LowRank and delta.mid is None and delta.bias is None
            and int(getattr(layer, "groups", 1)) == 1)


class LowRankStack:
    """The stacked factors of LoRAs ``indices`` on one layer, strengths and scales folded into ``up``."""

    def __init__(self, indices: list[int], deltas: list[LowRank], strengths: list[float], layer: nn.Module) -> None:
        self.indices = indices
        shape = weight_shape(layer)
        self.conv = len(shape) == 4
        downs = []
        for d in deltas:
            down = d.down
            if self.conv and down.ndim == 2:
                down = down[:, :, None, None]  # a linear-shaped LoRA on a 1x1 conv
            downs.append(down if self.conv else down.reshape(down.shape[0], -1))
        self.down = torch.cat(downs)
        ups = [d.up.reshape(d.up.shape[0], -1) * (d.scale * s) for d, s in zip(deltas, strengths, strict=True)]
        self.up = torch.cat(ups, dim=1)
        if self.conv:
            self.up = self.up[:, :, None, None]
        self.ranks = torch.tensor([d.down.shape[0] for d in deltas])

    def apply(self, x: Tensor, layer: nn.Module, weights: Tensor) -> Tensor:
        """sum over the stack of w_i * s_i * delta_i(x); ``weights`` [N, rows, ...] as LayerMaps gives them."""
        w = weights[self.indices].to(x.dtype)
        ranks = self.ranks.to(x.device)
        if self.conv:
            h = _conv(x, self.down, layer)                                    # [rows, R, h, w]
            h = h * w.squeeze(2).movedim(0, 1).repeat_interleave(ranks, dim=1, output_size=h.shape[1])
            return F.conv2d(h, self.up)
        h = F.linear(x, self.down)                                            # [..., R]
        h = h * w.squeeze(-1).movedim(0, -1).repeat_interleave(ranks, dim=-1, output_size=h.shape[-1])
        return F.linear(h, self.up)
