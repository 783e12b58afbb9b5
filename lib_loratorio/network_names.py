"""Binding a LoRA file's modules to the modules of a live network.

LoRA files name UNet modules in one of two conventions: diffusers (``down_blocks.1.attentions.0``;
kohya SD1.5 LoRAs, diffusers/PEFT files) or ldm/CompVis (``input_blocks.4.1``; kohya SDXL LoRAs,
the A1111/Forge UNet). Rather than converting names with SD1.5's hard-coded numbers, every module
of the live UNet is indexed under its own flattened name *and* under its name in the other
convention, derived by walking the network's blocks (layers per level, whether a level has
attention, where the down/up samplers sit). The same file then binds to a diffusers UNet and to
the A1111 UNet, and tiny test networks and SDXL need no special cases.

Text encoders are indexed by their HF CLIP names (``text_model.encoder.layers.N...``, with or
without ``text_model.``), also when nested in a wrapper, and open_clip's (A1111 SDXL ``te2``)
layers under the HF names LoRAs use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from torch import nn

from .errors import LoraMismatchError
from .lora_files import LoraFile
from .lora_layers import FusedAttentionDelta, ModuleDelta

__all__ = ["BoundLora", "bind_lora", "unet_name_aliases"]

# diffusers ResnetBlock2D child -> ldm ResBlock child.
_RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_RESNET_TO_DIFFUSERS = {v: k for k, v in _RESNET_TO_LDM.items()}

# Top-level modules outside the blocks: diffusers name -> ldm name.
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0", "conv_out": "out.2",
}

# open_clip residual block child -> HF CLIP encoder layer child.
_OPEN_CLIP_TO_HF = {
    "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "ln_1": "layer_norm1", "ln_2": "layer_norm2",
}
_OPEN_CLIP_BLOCK = re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\.(.+)$")



# Cross-attention context width -> model family, for mismatch messages.
_CONTEXT_DIMS = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}


@dataclass
class BoundLora:
    """A LoRA file bound to a live network: what to apply where."""

    lora: LoraFile
    #: (qualified live module name "<component>:<dotted name>", the module, its delta)
    targets: list[tuple[str, nn.Module, ModuleDelta]]
    #: LoRA keys that bind to nothing (not fatal)
    unmatched: list[str] = field(default_factory=list)
    #: why a key in ``unmatched`` was left out, where there is more to say than "no such module"
    reasons: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for name, _, _ in self.targets:
            comp = name.split(":", 1)[0]
            counts[comp] = counts.get(comp, 0) + 1
        parts = ", ".join(f"{c} {n}" for c, n in sorted(counts.items())) or "none"
        text = f"{self.lora.name}: {len(self.targets)} modules bound ({parts})"
        if self.unmatched:
            text += f", {len(self.unmatched)} keys unmatched (e.g. {self.unmatched[0]})"
            why: dict[str, int] = {}
            for key in self.unmatched:
                reason = self.reasons.get(key, "no module of that name in the model")
                why[reason] = why.get(reason, 0) + 1
            text += "; " + "; ".join(f"{n}: {reason}" for reason, n in why.items())
        return text


def _rename(rest: str, table: Mapping[str, str]) -> Optional[str]:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return list(module.named_children())


def _block_pairs_from_diffusers(unet: nn.Module) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, ldm prefix, is_resnet) for every block of a diffusers UNet."""
    pairs: list[tuple[str, str, bool]] = []
    n = 1
    for i, block in enumerate(unet.down_blocks):
        attns = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            pairs.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", True))
            if attns is not None and j < len(attns):
                pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1", False))
            n += 1
        if getattr(block, "downsamplers", None):
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{n}.0.op", False))
            n += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        # ldm's middle_block interleaves ResBlock, SpatialTransformer, ResBlock, ...
        for j in range(len(mid.resnets)):
            pairs.append((f"mid_block.resnets.{j}", f"middle_block.{2 * j}", True))
        for j in range(len(getattr(mid, "attentions", None) or [])):
            pairs.append((f"mid_block.attentions.{j}", f"middle_block.{2 * j + 1}", False))
    n = 0
    for i, block in enumerate(unet.up_blocks):
        attns = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            pairs.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", True))
            if attns is not None and j < len(attns):
                pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1", False))
            n += 1
        if getattr(block, "upsamplers", None):
            # The upsampler shares the level's last ldm block, after its ResBlock (+ attention).
            k = 2 if attns is not None and len(attns) else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{n - 1}.{k}.conv", False))
    return pairs


def _is_upsample(m: nn.Module) -> bool:
    return hasattr(m, "conv") and not hasattr(m, "in_layers") and not hasattr(m, "transformer_blocks")


def _block_pairs_from_ldm(unet: nn.Module) -> list[tuple[str, str, bool]]:
    """(ldm prefix, diffusers prefix, is_resnet) for every block of an ldm/CompVis UNet."""
    pairs: list[tuple[str, str, bool]] = []
    level = j = 0
    for n, block in _children(unet.input_blocks)[1:]:
        kids = _children(block)
        if hasattr(kids[0][1], "op"):  # Downsample closes a level
            pairs.append((f"input_blocks.{n}.0.op", f"down_blocks.{level}.downsamplers.0.conv", False))
            level, j = level + 1, 0
            continue
        pairs.append((f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{j}", True))
        if len(kids) > 1:
            pairs.append((f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{j}", False))
        j += 1
    for k, _ in _children(getattr(unet, "middle_block", nn.Sequential())):
        idx = int(k)
        kind = "resnets" if idx % 2 == 0 else "attentions"
        pairs.append((f"middle_block.{k}", f"mid_block.{kind}.{idx // 2}", idx % 2 == 0))
    level = j = 0
    for n, block in _children(unet.output_blocks):
        upsampled = False
        for k, child in _children(block):
            if k == "0":
                pairs.append((f"output_blocks.{n}.0", f"up_blocks.{level}.resnets.{j}", True))
            elif _is_upsample(child):
                pairs.append((f"output_blocks.{n}.{k}.conv", f"up_blocks.{level}.upsamplers.0.conv", False))
                upsampled = True
            else:
                pairs.append((f"output_blocks.{n}.{k}", f"up_blocks.{level}.attentions.{j}", False))
        j += 1
        if upsampled:  # an Upsample closes a level
            level, j = level + 1, 0
    return pairs


def unet_name_aliases(unet: nn.Module) -> dict[str, str]:
    """Module name in the network's own convention -> its name in the other convention."""
    if hasattr(unet, "down_blocks") and hasattr(unet, "up_blocks"):
        pairs, top, res = _block_pairs_from_diffusers(unet), _TOP_LEVEL, _RESNET_TO_LDM
    elif hasattr(unet, "input_blocks") and hasattr(unet, "output_blocks"):
        pairs = _block_pairs_from_ldm(unet)
        top, res = {v: k for k, v in _TOP_LEVEL.items()}, _RESNET_TO_DIFFUSERS
    else:
        return {}
    pairs = pairs + [(a, b, False) for a, b in top.items()]
    aliases: dict[str, str] = {}
    for own, other, is_resnet in pairs:
        try:
            root = unet.get_submodule(own)
        except AttributeError:
            continue
        for rest, _ in root.named_modules():
            if not rest:
                aliases[own] = other
                continue
            mapped = _rename(rest, res) if is_resnet else rest
            if mapped is not None:
                aliases[f"{own}.{rest}"] = f"{other}.{mapped}"
    return aliases


def _text_encoder_aliases(name: str) -> list[str]:
    """HF CLIP names for a text-encoder module: with and without the ``text_model.`` level
    (transformers 5 dropped it from CLIPTextModel), nested in a wrapper, or from open_clip."""
    out = []
    i = name.find("text_model.")
    if i >= 0:
        out += [name[i:], name[i + len("text_model."):]]
    else:
        j = name.find("encoder.layers.")
        if j == 0 or (j > 0 and name[j - 1] == "."):
            out += ["text_model." + name[j:], name[j:]]
    m = _OPEN_CLIP_BLOCK.search(name)
    if m:
        layer, rest = m.groups()
        if rest == "attn":
            out += [f"text_model.encoder.layers.{layer}.self_attn.{p}_proj" for p in "qkv"]
        else:
            mapped = _rename(rest, _OPEN_CLIP_TO_HF)
            if mapped is not None:
                out.append(f"text_model.encoder.layers.{layer}.{mapped}")
    return out


def _index(component: str, root: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Flattened name (own and alias) -> (own dotted name, module) for weight-bearing modules."""
    aliases = unet_name_aliases(root) if component == "unet" else {}
    index: dict[str, tuple[str, nn.Module]] = {}
    for name, module in root.named_modules():
        if not name or not (hasattr(module, "weight") or isinstance(module, nn.MultiheadAttention)):
            continue
        names = [name]
        if name in aliases:
            names.append(aliases[name])
        if component != "unet":
            names += _text_encoder_aliases(name)
        for n in names:
            index.setdefault(n.replace(".", "_"), (name, module))
    return index


def _context_dim_of_lora(lora: LoraFile) -> Optional[int]:
    for key, delta in lora.modules.items():
        if key.startswith("unet:") and key.endswith("attn2_to_k") and len(delta.shape) >= 2:
            return delta.shape[1]
    return None


def _context_dim_of_model(unet: Optional[nn.Module]) -> Optional[int]:
    if unet is None:
        return None
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k") and getattr(module, "weight", None) is not None:
            return int(module.weight.shape[1])
    return None


def _likely_cause(lora: LoraFile, components: Mapping[str, nn.Module]) -> str:
    lora_ctx = _context_dim_of_lora(lora)
    model_ctx = _context_dim_of_model(components.get("unet"))
    if lora_ctx and model_ctx and lora_ctx != model_ctx:
        if lora_ctx in _CONTEXT_DIMS and model_ctx in _CONTEXT_DIMS:
            return (f"this looks like an {_CONTEXT_DIMS[lora_ctx]} LoRA (context dim {lora_ctx}) "
                    f"but the model is {_CONTEXT_DIMS[model_ctx]} ({model_ctx})")
        return (f"the LoRA was trained for cross-attention context dim {lora_ctx} but the model "
                f"uses {model_ctx}: it is for another base model family")
    if any(k.startswith("te2:") for k in lora.modules) and "te2" not in components:
        return "the LoRA has SDXL's second text encoder, so it looks like an SDXL LoRA, but the model has one"
    return "it was probably trained for another base model (family or size) than the one loaded"


def bind_lora(lora: LoraFile, components: Mapping[str, nn.Module]) -> BoundLora:
    """Match every module of ``lora`` to a live module of ``components`` (``unet``/``te1``/``te2``).

    Raises LoraMismatchError when any matched module has another shape than the LoRA expects,
    or when none of the LoRA's modules for the given components exists in the network.
    """
    indexes = {comp: _index(comp, root) for comp, root in components.items()}
    # nn.MultiheadAttention applies its in_proj and out_proj weights itself (a hook on out_proj
    # would never fire): q/k/v/out keys of one attention are gathered into one fused delta.
    attention_of = {id(m.out_proj): m for root in components.values() for m in root.modules()
                    if isinstance(m, nn.MultiheadAttention)}
    fused: dict[int, tuple[str, nn.MultiheadAttention, dict[str, ModuleDelta]]] = {}
    bound = BoundLora(lora=lora, targets=[])
    mismatched: list[str] = []
    candidates = explained = 0
    for key, delta in lora.modules.items():
        comp, flat = key.split(":", 1)
        if comp not in indexes:
            bound.unmatched.append(key)
            bound.reasons[key] = f"the model has no '{comp}' component"
            continue
        candidates += 1
        hit = indexes[comp].get(flat)
        if hit is None:
            bound.unmatched.append(key)
            continue
        name, module = hit
        if isinstance(module, nn.MultiheadAttention) or id(module) in attention_of:
            attention = attention_of.get(id(module), module)
            part = flat.rsplit("_", 2)[-2] if flat.endswith("_proj") else ""
            e = attention.embed_dim
            if part not in FusedAttentionDelta.PARTS or not delta.fits((e, e)):
                mismatched.append(f"{key}: LoRA {list(delta.shape)} vs attention projection {[e, e]}")
                continue
            entry = fused.setdefault(id(attention), (f"{comp}:{name.removesuffix('.out_proj')}", attention, {}))
            entry[2][part] = delta
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.ndim not in (2, 4):
            bound.unmatched.append(key)
            bound.reasons[key] = f"LoRA on a {type(module).__name__} layer is not supported"
            explained += 1
            continue
        if not delta.fits(tuple(weight.shape)):
            mismatched.append(f"{key}: LoRA {list(delta.shape)} vs model {list(weight.shape)}")
            continue
        bound.targets.append((f"{comp}:{name}", module, delta))
    bound.targets += [(name, attention, FusedAttentionDelta(parts)) for name, attention, parts in fused.values()]
    if mismatched:
        raise LoraMismatchError(
            f"LoRA '{lora.name}' does not fit the loaded model: {len(mismatched)} of "
            f"{len(lora.modules)} modules have other shapes (e.g. {mismatched[0]}); "
            f"{_likely_cause(lora, components)}. Use a LoRA made for this model.")
    if candidates > explained and not bound.targets:
        sample = ", ".join(k for k in bound.unmatched[:3])
        raise LoraMismatchError(
            f"LoRA '{lora.name}' matches none of the loaded model's modules ({candidates} keys, "
            f"e.g. {sample}): it is for another model architecture; "
            f"{_likely_cause(lora, components)}.")
    return bound
