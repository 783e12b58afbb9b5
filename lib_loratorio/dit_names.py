"""diffusers' names of a diffusion transformer's modules, in the names the hosts' models use.

ComfyUI and Forge (Neo) build each transformer family from the original code, so their module names are the
families' own (BFL for Flux.1, Flux.2 and Chroma; Alpha-VLLM's for Lumina 2 and Z-Image); diffusers renames many
of them and splits some fused layers, and LoRA trainers write either naming (ai-toolkit and musubi-tuner Z-Image
files use diffusers' names, diffusion-pipe and sd-scripts the native ones). Every family is described by the same
kind of table, read against the live model so that only modules it has are aliased:

* top-level modules: diffusers name -> native name (BFL Flux, NextDiT, SD3's MMDiT, Wan; Qwen-Image's ComfyUI
  names are diffusers' own);
* per block of each block list: diffusers child -> native child (the block lists may be named differently);
* fused layers: diffusers' parts -> the native layer and the output columns each part is, widths from the live
  model (Flux: q/k/v as thirds of ``qkv``, then ``proj_mlp`` for the rest of ``linear1``; Lumina 2's grouped-query
  attention: q as wide as the model, k and v narrower).

A part's columns go to the binder as an :class:`OutputSlice`; the parts of one layer become one delta.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Optional

from torch import nn

from .flux import is_flux
from .lora_layers import OutputSlice, weight_shape

#: diffusers name -> (native name, the output columns it covers, or None for the whole layer)
Aliases = dict[str, tuple[str, Optional[OutputSlice]]]


def has_weight(module: Optional[nn.Module]) -> bool:
    return getattr(module, "weight", None) is not None


# --- Flux.1, Flux.2, Chroma (BFL naming; as ComfyUI's flux_to_diffusers) ------------------------------------------
_FLUX_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    # Flux.2: one modulation per stream, timestep and guidance embedders renamed
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    # Chroma's guidance approximator
    "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
    "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj",
}
_FLUX_BLOCKS: dict[tuple[str, str], Mapping[str, str]] = {
    ("transformer_blocks", "double_blocks"): {
        "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
        "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
        "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
        "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
        "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",                   # Flux.2
        "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2",
    },
    ("single_transformer_blocks", "single_blocks"): {
        "norm.linear": "modulation.lin", "proj_out": "linear2",
        "attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2",                   # Flux.2
    },
    ("distilled_guidance_layer.layers", "distilled_guidance_layer.layers"): {
        "linear_1": "in_layer", "linear_2": "out_layer",
    },
}
# diffusers parts of a fused layer, in output order (a part past the widths: the rest of the layer's output).
_FLUX_FUSED: dict[str, Mapping[str, Sequence[str]]] = {
    "double_blocks": {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                      "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")},
    "single_blocks": {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")},
}

# --- Lumina 2 and Z-Image (NextDiT) -------------------------------------------------------------------------------
_NEXTDIT_TOP = {
    "all_x_embedder.2-1": "x_embedder", "all_final_layer.2-1.linear": "final_layer.linear",         # Z-Image
    "all_final_layer.2-1.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
    "time_caption_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",                          # Lumina 2
    "time_caption_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_caption_embed.caption_embedder.1": "cap_embedder.1",
    "norm_out.linear_1": "final_layer.adaLN_modulation.1", "norm_out.linear_2": "final_layer.linear",
}
_NEXTDIT_BLOCK = {
    "attention.to_out.0": "attention.out", "attn.to_out.0": "attention.out",
    "feed_forward.linear_1": "feed_forward.w1", "feed_forward.linear_2": "feed_forward.w2",
    "feed_forward.linear_3": "feed_forward.w3", "norm1.linear": "adaLN_modulation.1",
}
_NEXTDIT_BLOCKS = {(blocks, blocks): _NEXTDIT_BLOCK for blocks in ("layers", "noise_refiner", "context_refiner")}
# Z-Image's diffusers names (and musubi-tuner's, ai-toolkit's) say "attention", Lumina 2's "attn"
_NEXTDIT_FUSED = {blocks: {"attention.qkv": ("attention.to_q", "attention.to_k", "attention.to_v")}
                  for blocks in ("layers", "noise_refiner", "context_refiner")}
_LUMINA2_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")


# --- SD3 / SD3.5 (MMDiT; as ComfyUI's mmdit_to_diffusers) ---------------------------------------------------------
_MMDIT_TOP = {
    "pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
}
_MMDIT_BLOCKS = {("transformer_blocks", "joint_blocks"): {
    "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
    "attn2.to_out.0": "x_block.attn2.proj",
    "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
}}
_MMDIT_FUSED = {"joint_blocks": {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                                 "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                                 "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}}

# --- Wan 2.1 / 2.2 (as diffusers' _convert_non_diffusers_wan_lora_to_diffusers) ------------------------------------
_WAN_TOP = {
    "patch_embedding": "patch_embedding", "proj_out": "head.head",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
}
_WAN_BLOCKS = {("blocks", "blocks"): {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}}


def _is_nextdit(model: nn.Module) -> bool:
    return hasattr(model, "cap_embedder") and hasattr(model, "noise_refiner")


class _Table:
    """Aliases of one live model, filled from the tables above."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.aliases: Aliases = {}

    def add(self, diffusers: str, native: str, columns: Optional[OutputSlice] = None) -> None:
        if has_weight(self.modules.get(native)):
            self.aliases.setdefault(diffusers, (native, columns))

    def one_to_one(self, top: Mapping[str, str], blocks: Mapping[tuple[str, str], Mapping[str, str]]) -> None:
        for diffusers, native in top.items():
            self.add(diffusers, native)
        for (theirs, ours), children in blocks.items():
            for i in self._block_indices(ours):
                for diffusers, native in children.items():
                    self.add(f"{theirs}.{i}.{diffusers}", f"{ours}.{i}.{native}")

    def fused(self, block: str, layer: str, parts: Sequence[str], widths: Sequence[int]) -> None:
        """diffusers ``parts`` (under ``block``, their name of the block) of the fused ``layer``, ``widths`` output
        columns each; a part past the widths is the rest of the output."""
        start, total = 0, weight_shape(self.modules[layer])[0]
        for k, part in enumerate(parts):
            width = widths[k] if k < len(widths) else total - start
            self.add(f"{block}.{part}", layer, OutputSlice(start, width))
            start += width

    def _block_indices(self, blocks: str) -> list[str]:
        container = self.modules.get(blocks)
        return [i for i, _ in container.named_children()] if container is not None else []

    def fused_blocks(self, renamed: Mapping[str, str], fused: Mapping[str, Mapping[str, Sequence[str]]],
                     widths_of: Callable[[str], list[int]]) -> None:
        """Every block's fused layers (``fused``: block list -> {layer -> diffusers parts}); ``renamed``: diffusers'
        names of the block lists; ``widths_of(layer)``: the parts' output widths."""
        for ours, layers in fused.items():
            for i in self._block_indices(ours):
                for child, parts in layers.items():
                    layer = f"{ours}.{i}.{child}"
                    if has_weight(self.modules.get(layer)):
                        self.fused(f"{renamed.get(ours, ours)}.{i}", layer, parts, widths_of(layer))


def _flux(model: nn.Module) -> Aliases:
    """Flux.1, Flux.2 and Chroma: ``norm_out.linear`` maps to ``final_layer.adaLN_modulation.1`` with swapped halves
    (diffusers orders that output (scale, shift), BFL (shift, scale))."""
    table = _Table(model)
    table.one_to_one(_FLUX_TOP, _FLUX_BLOCKS)
    norm_out = "final_layer.adaLN_modulation.1"
    if has_weight(table.modules.get(norm_out)):
        table.add("norm_out.linear", norm_out, OutputSlice(0, weight_shape(table.modules[norm_out])[0],
                                                           swap_halves=True))

    def widths(layer: str) -> list[int]:
        hidden = weight_shape(table.modules[layer])[1]
        return [hidden] * 3  # q, k, v: a hidden size each (then, in linear1, the MLP's input: the rest)

    renamed = {"double_blocks": "transformer_blocks", "single_blocks": "single_transformer_blocks"}
    table.fused_blocks(renamed, _FLUX_FUSED, widths)
    return table.aliases


def _nextdit(model: nn.Module) -> Aliases:
    """Lumina 2 and Z-Image: q, k and v of the fused ``attention.qkv``: q as wide as the model (its heads are
    dim / n_heads wide), k and v half the rest each (grouped-query attention: fewer key/value heads)."""
    table = _Table(model)
    table.one_to_one(_NEXTDIT_TOP, _NEXTDIT_BLOCKS)

    def widths(layer: str) -> list[int]:
        out, dim = weight_shape(table.modules[layer])[:2]
        return [dim, (out - dim) // 2, (out - dim) // 2]  # q: every head (n_heads x dim / n_heads); k, v: the rest

    table.fused_blocks({}, _NEXTDIT_FUSED, widths)
    lumina2 = {blocks: {"attention.qkv": _LUMINA2_QKV} for blocks in _NEXTDIT_FUSED}
    table.fused_blocks({}, lumina2, widths)
    return table.aliases


def _mmdit(model: nn.Module) -> Aliases:
    """SD3 and SD3.5: q, k and v of the fused ``qkv`` layers as thirds; ``norm_out`` and the last block's
    ``norm1_context`` (its context block is ``pre_only``: shift and scale only) with swapped halves, as in Flux."""
    table = _Table(model)
    last = f"joint_blocks.{len(model.joint_blocks) - 1}.context_block.adaLN_modulation.1"
    for diffusers, native in (("norm_out.linear", "final_layer.adaLN_modulation.1"),
                              (f"transformer_blocks.{len(model.joint_blocks) - 1}.norm1_context.linear", last)):
        if has_weight(table.modules.get(native)):
            table.add(diffusers, native, OutputSlice(0, weight_shape(table.modules[native])[0], swap_halves=True))
    table.one_to_one(_MMDIT_TOP, _MMDIT_BLOCKS)
    table.fused_blocks({"joint_blocks": "transformer_blocks"}, _MMDIT_FUSED,
                       lambda layer: [weight_shape(table.modules[layer])[1]] * 3)
    return table.aliases


AliasesOf = Callable[[nn.Module], Aliases]


def _one_to_one(top: Mapping[str, str], blocks: Mapping[tuple[str, str], Mapping[str, str]]) -> AliasesOf:
    def aliases(model: nn.Module) -> Aliases:
        table = _Table(model)
        table.one_to_one(top, blocks)
        return table.aliases
    return aliases


# Each family by a module only it has: (test, its aliases).
_FAMILIES: list[tuple[Callable[[nn.Module], bool], AliasesOf]] = [
    (lambda m: is_flux(m) or hasattr(m, "distilled_guidance_layer"), _flux),          # Flux.1, Flux.2, Chroma
    (_is_nextdit, _nextdit),                                                          # Lumina 2, Z-Image
    (lambda m: hasattr(m, "joint_blocks"), _mmdit),                                   # SD3, SD3.5
    (lambda m: hasattr(m, "blocks") and hasattr(m, "patch_embedding"), _one_to_one(_WAN_TOP, _WAN_BLOCKS)),  # Wan
]


def dit_name_aliases(model: nn.Module) -> Aliases:
    """diffusers name -> (native name, output columns or None) for a transformer in its hosts' naming; empty for
    anything else (Qwen-Image's native names are diffusers' own)."""
    for test, aliases in _FAMILIES:
        if test(model):
            return aliases(model)
    return {}
