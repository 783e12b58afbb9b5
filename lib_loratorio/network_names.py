"""Binding a LoRA file's modules to the modules of a live network.

LoRA files name UNet modules in one of two conventions: diffusers (``down_blocks.1.attentions.0``;
kohya SD1.5 LoRAs, diffusers/PEFT files) or ldm/CompVis (``input_blocks.4.1``; kohya SDXL LoRAs,
the A1111/Forge UNet). Rather than converting names with SD1.5's hard-coded numbers, every module
of the live UNet is indexed under its own flattened name *and* under its name in the other
convention, derived by walking the network's blocks (layers per level, whether a level has
attention, where the down/up samplers sit). The same file then binds to a diffusers UNet and to
the A1111 UNet, and tiny test networks and SDXL need no special cases.

A diffusion transformer in its hosts' naming (Flux in BFL naming, with fused ``qkv``/``linear1``
layers; Lumina 2 and Z-Image with a fused ``attention.qkv``...) is also indexed under its diffusers
names (dit_names.py). Where diffusers splits a fused layer (``to_q``/``to_k``/``to_v``, ``proj_mlp``),
the alias carries the output columns it stands for and the binder gathers all such parts of one layer
into a :class:`SlicedOutputDelta`; slice widths come from the live model.

Shapes are read with :func:`lora_layers.weight_shape` (bnb 4-bit weights report a packed shape).

Text encoders are indexed by their HF CLIP names (``text_model.encoder.layers.N...``, with or
without ``text_model.``), also when nested in a wrapper, and open_clip's (A1111 SDXL ``te2``)
layers under the HF names LoRAs use. T5 (Flux ``te2``/``te3``) binds under its own names, a language
model used as text encoder (Qwen3, Gemma2...) under its HF names with or without ``model.``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Collection, Mapping, Optional

from torch import nn

from .dit_names import dit_name_aliases, has_weight
from .errors import LoraMismatchError
from .flux import is_flux
from .lora_files import LoraFile
from .lora_layers import DoRA, FusedAttentionDelta, ModuleDelta, OutputSlice, SlicedOutputDelta, weight_shape

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
    """A LoRA file bound to a live network: what to apply where, and what was left out and why."""

    lora: LoraFile
    #: (qualified live module name "<component>:<dotted name>", the module, its delta)
    targets: list[tuple[str, nn.Module, ModuleDelta]]
    #: LoRA keys that bind to nothing (not fatal)
    unmatched: list[str] = field(default_factory=list)
    #: why a key in ``unmatched`` was left out, where there is more to say than "no such module"
    reasons: dict[str, str] = field(default_factory=dict)
    #: file modules that were bound (several may share one target, e.g. q/k/v of a fused layer)
    applied: int = 0
    #: the networks bound to, by component (to find a target's parent module)
    roots: dict[str, nn.Module] = field(default_factory=dict)

    def not_applied(self) -> dict[str, str]:
        """Every module of the file that is not applied, with the reason: modules the file could not
        build (LoraFile.skipped) and modules that bind to nothing."""
        out = dict(self.lora.skipped)
        out.update({key: self.reasons.get(key, _NO_SUCH_MODULE) for key in self.unmatched})
        return out

    def summary(self) -> str:
        """One line for the console: what was bound, and what was not, grouped by reason."""
        counts: dict[str, int] = {}
        for name, _, _ in self.targets:
            comp = name.split(":", 1)[0]
            counts[comp] = counts.get(comp, 0) + 1
        parts = ", ".join(f"{c} {n}" for c, n in sorted(counts.items())) or "none"
        text = f"{self.lora.name}: {self.applied} modules applied ({parts})"
        missing = self.not_applied()
        if missing:
            text += f"; {len(missing)} not applied: " + _by_reason(missing)
        return text


_NO_SUCH_MODULE = "no module of that name in the model"


def _by_reason(missing: Mapping[str, str], examples: int = 2) -> str:
    """'N: reason (e.g. key, key); ...' for keys grouped by reason, the most frequent first."""
    groups: dict[str, list[str]] = {}
    for key, reason in missing.items():
        groups.setdefault(reason, []).append(key)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    return "; ".join(f"{len(keys)}: {reason} (e.g. {', '.join(keys[:examples])})" for reason, keys in ordered)


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
    (transformers 5 dropped it from CLIPTextModel), nested in a wrapper, or from open_clip; a language
    model's decoder layers without the ``model.`` level (ComfyUI's and Neo's Qwen3/Gemma2/Qwen2.5 hold
    them under ``model.layers``, HF's base models and kohya's ``lora_te_layers_N_...`` keys do not)."""
    out = [name[len("model."):]] if name.startswith("model.layers.") else []
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


# Flattened LoRA name -> (own dotted name, module, output columns it covers or None for all).
_Index = dict[str, tuple[str, nn.Module, Optional[OutputSlice]]]


def _index(component: str, root: nn.Module) -> _Index:
    """Flattened name (own and alias) -> where a LoRA module of that name applies."""
    aliases = unet_name_aliases(root) if component == "unet" else {}
    index: _Index = {}
    for name, module in root.named_modules():
        if not name or not (hasattr(module, "weight") or isinstance(module, nn.MultiheadAttention)):
            continue
        names = [name]
        if name in aliases:
            names.append(aliases[name])
        if component != "unet":
            names += _text_encoder_aliases(name)
        for n in names:
            index.setdefault(n.replace(".", "_"), (name, module, None))
    if component == "unet":
        for diffusers, (native, columns) in dit_name_aliases(root).items():
            index.setdefault(diffusers.replace(".", "_"), (native, root.get_submodule(native), columns))
    return index


_ATTN2_KV = re.compile(r"attn2_to_[kv]$")
# Key fragments only SDXL's UNet has: its added-conditioning embedding, and several transformer
# blocks per attention (SD1.x/2.x have exactly one).
_SDXL_UNET_KEY = re.compile(r"(label_emb|add_embedding|transformer_blocks_[1-9])")
# SD1.x/2.x have attention at the first level, SDXL has none there.
_SD1_UNET_KEY = re.compile(
    r"^(down_blocks_0_attentions|input_blocks_[12]_1_|up_blocks_3_attentions|output_blocks_(9|10|11)_1_)")


def _context_dim_of_lora(lora: LoraFile) -> Optional[int]:
    for key, delta in lora.modules.items():
        if key.startswith("unet:") and _ATTN2_KV.search(key) and len(delta.shape) >= 2:
            return delta.shape[1]
    return None


def _context_dim_of_model(unet: Optional[nn.Module]) -> Optional[int]:
    if unet is None:
        return None
    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")) and has_weight(module):
            return weight_shape(module)[1]
    return None


def _family_of_lora(lora: LoraFile) -> Optional[str]:
    """SD1.x, SD2.x, SDXL or Flux, from the file's key names and shapes; None if it cannot tell."""
    unet_keys = [k.split(":", 1)[1] for k in lora.modules if k.startswith("unet:")]
    if any(k.startswith(_FLUX_LORA_PREFIXES) for k in unet_keys):
        return "Flux"
    context = _context_dim_of_lora(lora)
    if context in _CONTEXT_DIMS:
        return _CONTEXT_DIMS[context]
    if any(_SDXL_UNET_KEY.search(k) for k in unet_keys) or any(k.startswith("te2:") for k in lora.modules):
        return "SDXL"
    if any(_SD1_UNET_KEY.match(k) for k in unet_keys):
        return "SD1.x/SD2.x"
    return None


def _family_of_model(components: Mapping[str, nn.Module]) -> Optional[str]:
    unet = components.get("unet")
    if unet is None:
        return None
    if is_flux(unet):
        return "Flux"
    context = _context_dim_of_model(unet)
    if context in _CONTEXT_DIMS:
        return _CONTEXT_DIMS[context]
    if hasattr(unet, "label_emb") or getattr(unet, "add_embedding", None) is not None:
        return "SDXL"
    return None


def _same_family(a: str, b: str) -> bool:
    return a == b or {a, b} <= {"SD1.x/SD2.x", "SD1.5", "SD2.x"}


_FLUX_QKV_KEY = re.compile(r"unet:(?:double_blocks_\d+_img_attn_qkv|transformer_blocks_\d+_attn_to_q)$")


def _flux_hidden_sizes(lora: LoraFile, unet: Optional[nn.Module]) -> Optional[tuple[int, int]]:
    """(LoRA's, model's) Flux hidden size, from the input width of the image attention's q/qkv."""
    try:
        qkv = unet.get_submodule("double_blocks.0.img_attn.qkv") if unet is not None else None
    except AttributeError:
        return None
    if not has_weight(qkv):
        return None
    widths = [d.shape[1] for k, d in lora.modules.items() if _FLUX_QKV_KEY.match(k) and len(d.shape) == 2]
    return (widths[0], weight_shape(qkv)[1]) if widths else None


_FLUX_LORA_PREFIXES = ("double_blocks_", "single_blocks_", "transformer_blocks_", "single_transformer_blocks_")


def _likely_cause(lora: LoraFile, components: Mapping[str, nn.Module]) -> str:
    unet = components.get("unet")
    hidden = _flux_hidden_sizes(lora, unet)
    if hidden and hidden[0] != hidden[1]:
        return (f"the LoRA was trained for a Flux-type model of hidden size {hidden[0]} but the model's "
                f"is {hidden[1]}: it is for another model of that family")
    lora_family, model_family = _family_of_lora(lora), _family_of_model(components)
    if lora_family == "Flux" and model_family != "Flux":
        return "this looks like a Flux LoRA but the model is not a Flux model"
    if model_family == "Flux" and lora_family is not None and lora_family != "Flux":
        return "this looks like a LoRA for a UNet model (SD1.x/SDXL) but the model is Flux"
    lora_ctx, model_ctx = _context_dim_of_lora(lora), _context_dim_of_model(unet)
    if lora_family and model_family and not _same_family(lora_family, model_family):
        detail = f" (context dim {lora_ctx} vs {model_ctx})" if lora_ctx and model_ctx else ""
        return f"this looks like an {lora_family} LoRA but the model is {model_family}{detail}"
    if lora_ctx and model_ctx and lora_ctx != model_ctx:
        return (f"the LoRA was trained for cross-attention context dim {lora_ctx} but the model "
                f"uses {model_ctx}: it is for another base model family")
    if any(k.startswith("te2:") for k in lora.modules) and "te2" not in components:
        return "the LoRA has SDXL's second text encoder, so it looks like an SDXL LoRA, but the model has one"
    return "it was probably trained for another base model (family or size) than the one loaded"


def _slice_mismatch(key: str, delta: ModuleDelta, columns: OutputSlice, shape: tuple[int, ...]) -> str:
    end = columns.start + columns.length
    return (f"{key}: LoRA {list(delta.shape)} vs output columns {columns.start}:{end} of model layer "
            f"{list(shape)} (expected {[columns.length, *shape[1:]]})")


# DoRA would need the layer's weight rows reordered on every call; no such LoRA is known.
_SWAPPED_DORA = "DoRA on a layer whose output halves are swapped (diffusers Flux norm_out) is not supported"


def bind_lora(lora: LoraFile, components: Mapping[str, nn.Module], left_out: Collection[str] = ()) -> BoundLora:
    """Match every module of ``lora`` to a live module of ``components`` (``unet``/``te1``/``te2``/``te3``).

    ``left_out``: components whose keys are ignored on purpose (text encoders in "UNet only" mode);
    they are neither bound nor reported. Raises LoraMismatchError when any matched module has another
    shape than the LoRA expects, when none of the LoRA's modules exists in the network, or when
    more of the file's modules would be left out than applied (a LoRA applied in part, silently,
    looks like a bad LoRA rather than a wrong one).
    """
    indexes = {comp: _index(comp, root) for comp, root in components.items()}
    # nn.MultiheadAttention applies its in_proj and out_proj weights itself (a hook on out_proj
    # would never fire): q/k/v/out keys of one attention are gathered into one fused delta.
    attention_of = {id(m.out_proj): m for root in components.values() for m in root.modules()
                    if isinstance(m, nn.MultiheadAttention)}
    fused: dict[int, tuple[str, nn.MultiheadAttention, dict[str, ModuleDelta]]] = {}
    # Parts of one fused layer's output (diffusers Flux q/k/v on BFL qkv) gather into one delta.
    sliced: dict[int, tuple[str, nn.Module, list[tuple[OutputSlice, ModuleDelta]]]] = {}
    bound = BoundLora(lora=lora, targets=[], roots=dict(components))
    mismatched: list[str] = []
    candidates = explained = 0
    for key, delta in lora.modules.items():
        comp, flat = key.split(":", 1)
        if comp in left_out:
            continue
        if comp not in indexes:
            bound.unmatched.append(key)
            bound.reasons[key] = f"the model has no '{comp}' component"
            continue
        candidates += 1
        hit = indexes[comp].get(flat)
        if hit is None:
            bound.unmatched.append(key)
            continue
        name, module, columns = hit
        if isinstance(module, nn.MultiheadAttention) or id(module) in attention_of:
            attention = attention_of.get(id(module), module)
            part = flat.rsplit("_", 2)[-2] if flat.endswith("_proj") else ""
            e = attention.embed_dim
            if part not in FusedAttentionDelta.PARTS or not delta.fits((e, e)):
                mismatched.append(f"{key}: LoRA {list(delta.shape)} vs attention projection {[e, e]}")
                continue
            entry = fused.setdefault(id(attention), (f"{comp}:{name.removesuffix('.out_proj')}", attention, {}))
            entry[2][part] = delta
            bound.applied += 1
            continue
        shape = weight_shape(module) if has_weight(module) else ()
        if len(shape) not in (2, 4):
            bound.unmatched.append(key)
            bound.reasons[key] = f"LoRA on a {type(module).__name__} layer is not supported"
            explained += 1
            continue
        if columns is not None:
            if len(shape) != 2 or not delta.fits((columns.length, shape[1])):
                mismatched.append(_slice_mismatch(key, delta, columns, shape))
            elif columns.swap_halves and isinstance(delta, DoRA):
                bound.unmatched.append(key)
                bound.reasons[key] = _SWAPPED_DORA
                explained += 1
            else:
                sliced.setdefault(id(module), (f"{comp}:{name}", module, []))[2].append((columns, delta))
                bound.applied += 1
            continue
        if not delta.fits(shape):
            mismatched.append(f"{key}: LoRA {list(delta.shape)} vs model {list(shape)}")
            continue
        bound.targets.append((f"{comp}:{name}", module, delta))
        bound.applied += 1
    bound.targets += [(name, attention, FusedAttentionDelta(parts)) for name, attention, parts in fused.values()]
    bound.targets += [(name, module, SlicedOutputDelta(parts, weight_shape(module)))
                      for name, module, parts in sliced.values()]
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
    missing = {k: r for k, r in bound.not_applied().items() if k.split(":", 1)[0] not in left_out}
    if len(missing) > bound.applied:
        raise LoraMismatchError(
            f"LoRA '{lora.name}': {len(missing)} of its {len(missing) + bound.applied} modules cannot be "
            f"applied, more than are ({_by_reason(missing)}). Applying the rest would give a part of the "
            f"LoRA without saying so; {_likely_cause(lora, components)}. Use a LoRA made for this model "
            "(or report the file if it is one).")
    return bound
