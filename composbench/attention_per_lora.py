"""A measured alternative for LoRAtorio Fast's mixed rows, kept for the benchmark only (``--fast-attention-per-lora``).

The runtime's branch runner treats a UNet cross-attention's projections as layers like any other on mixed
rows: the query and output projections weighted per image token, the keys and values (which act on the
text) by each LoRA's mean weight. This runner instead computes each cross-attention once per LoRA (its
q/k/v/out deltas, its keys and values from the text) and blends the outputs by the maps, so that a patch
owned by LoRA i attends with LoRA i's keys and values. Measured: the same recall on composbench at a higher
cost (1.27 instead of 1.05 plain rows' FLOPs for a mixed row with four LoRAs at SD1.5's size; RESULTS.md).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
from torch import nn

from lib_loratorio.branch_runner import DEFAULT_CACHE_BYTES, BranchRunner
from lib_loratorio.network_names import BoundLora

# A UNet's cross-attention (SD1.x/2.x/SDXL, in diffusers and ldm naming alike) and its projections.
_CROSS_ATTENTION = re.compile(r"^(.*\.attn2)\.(to_q|to_k|to_v|to_out\.0)$")


def cross_attention_of(name: str) -> Optional[str]:
    """The dotted name of the cross-attention module whose projection ``name`` is, else None."""
    match = _CROSS_ATTENTION.match(name)
    return match.group(1) if match else None


class AttentionPerLoraRunner(BranchRunner):
    """BranchRunner whose mixed rows compute every LoRA-targeted cross-attention once per LoRA, blended by the maps."""

    def __init__(self, loras: Sequence[BoundLora], strengths: Sequence[float],
                 cache_bytes: int = DEFAULT_CACHE_BYTES, labels: Sequence[str] | None = None) -> None:
        super().__init__(loras, strengths, cache_bytes, labels)
        # cross-attention module -> its LoRA-targeted projections (blended per LoRA on mixed rows)
        self._attentions: dict[nn.Module, set[nn.Module]] = {}
        for lora in loras:
            for name, module, _ in lora.targets:
                comp, dotted = name.split(":", 1) if ":" in name else ("", name)
                parent = cross_attention_of(dotted)
                if parent is not None and comp in lora.roots:
                    self._attentions.setdefault(lora.roots[comp].get_submodule(parent), set()).add(module)
        self._in_attention: set[nn.Module] = {m for children in self._attentions.values() for m in children}

    def __enter__(self) -> "AttentionPerLoraRunner":
        super().__enter__()
        try:
            for attention in self._attentions:
                self._handles.append(attention.register_forward_hook(self._attention_hook, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def _mixes(self, module: nn.Module) -> bool:
        return module not in self._in_attention  # those: see _attention_hook

    def _attention_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        """Mixed rows of a cross-attention: computed once per LoRA (its q/k/v/out deltas, its keys and
        values from the text) and blended by the maps over the image tokens."""
        if self._mixed is None:
            return None
        sel, maps, n_rows = self._mixed, self._layer_maps, self._n_rows
        out = output[0] if isinstance(output, tuple) else output

        def rows(value):
            return value[sel] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n_rows else value

        sub_args, sub_kwargs = tuple(rows(a) for a in args), {k: rows(v) for k, v in kwargs.items()}
        weights = maps.weights_for(out[sel], False).to(out.device, out.dtype)
        lora_here = {j for child in self._attentions[module] for j, _ in self._by_module[child]}
        included = [i for i in range(self.n_loras) if maps.active[i] and i in lora_here and self.strengths[i] != 0]
        if not included:
            return None
        saved = self._selectors, self._mixed, self._layer_maps, self._n_rows
        blend = 0.0
        try:
            for i in included:
                self._selectors = [slice(None) if j == i else None for j in range(self.n_loras)]
                self._mixed, self._layer_maps, self._n_rows = None, None, None
                part = module.forward(*sub_args, **sub_kwargs)
                blend = blend + (part[0] if isinstance(part, tuple) else part) * weights[i]
        finally:
            self._selectors, self._mixed, self._layer_maps, self._n_rows = saved
        # LoRAs without a projection here keep the base attention (this pass's output) on their share
        rest = 1.0 - weights[included].sum(0)
        out = out.clone()
        out[sel] = blend + rest * out[sel]
        return (out, *output[1:]) if isinstance(output, tuple) else out
