"""Reading LoRA ``.safetensors`` files into per-module deltas keyed by a normalized name.

The normalized key is ``"<component>:<flat_name>"``: ``component`` is ``unet`` (any denoiser: SD UNet,
Flux transformer), ``te1`` (SD1.5's text encoder, SDXL's and Flux's CLIP, a language model used as the
only text encoder), ``te2`` (SDXL's second; Flux's T5 as OneTrainer and diffusers name it) or ``te3``
(T5 as kohya's sd-scripts and ComfyUI's ``text_encoders.t5xxl.`` name it), and ``flat_name`` is the
module path with '.' replaced by '_' as kohya writes it. Which live network a component means is the
caller's business (network_names.bind_lora). Flattening loses the information of where the dots were, so
the key is matched later against the *live* network's flattened names (network_names.py) instead of
being turned back into a dotted path here.

Only safetensors is read: pickled checkpoints can run arbitrary code when loaded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from safetensors import safe_open
from torch import Tensor

from .errors import LoraFileError
from .lora_layers import DoRA, FullDiff, LoHa, LoKr, LowRank, ModuleDelta

__all__ = ["LoraFile", "read_lora_file", "split_key"]


@dataclass
class LoraFile:
    path: Path
    name: str
    metadata: dict[str, str]
    modules: dict[str, ModuleDelta]
    #: module (or, for keys of no known layout, the key) -> why it was not read
    skipped: dict[str, str] = field(default_factory=dict)
    #: bytes of the file's tensors as held in memory
    nbytes: int = 0


# Parameter suffix in the file -> canonical parameter name. Longest suffixes are tried first.
_SUFFIXES: dict[str, str] = {
    # kohya / A1111 LoRA and LoCon
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid",
    ".alpha": "alpha", ".dora_scale": "dora_scale",
    # diffusers / PEFT
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_B.bias": "up_bias",
    ".lora_magnitude_vector.weight": "magnitude", ".lora_magnitude_vector": "magnitude",
    # diffusers LoRACompatibleLinear / attention processors; text encoders as diffusers' own savers write them
    # (convert_state_dict_to_diffusers: "text_encoder.<module>.lora_linear_layer.down.weight")
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    "_lora.down.weight": "down", "_lora.up.weight": "up",
    # LyCORIS
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a",
    ".hada_w2_b": "hada_w2_b", ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    ".diff": "diff", ".diff_b": "diff_b",
}
_SUFFIX_ORDER = sorted(_SUFFIXES, key=len, reverse=True)
# Suffixes only kohya/LyCORIS write; their keys always carry a "lora_unet_"-style prefix.
_KOHYA_SUFFIXES = {s for s in _SUFFIXES if not re.search(r"lora_[AB]\.|lora_magnitude|lora\.|lora_linear_layer", s)}

# Key prefix -> component, kohya style (underscore) and diffusers style (dotted). LyCORIS names
# diffusers Flux modules "lora_transformer_" / "lycoris_"; BFL/ComfyUI Flux files use
# "diffusion_model.", diffusers Flux files "transformer.".
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_transformer_": "unet", "lycoris_": "unet",
                   "lora_te1_": "te1", "lora_te2_": "te2", "lora_te3_": "te3", "lora_te_": "te1"}
_DOTTED_PREFIXES = {"unet.": "unet", "transformer.": "unet", "diffusion_model.": "unet",
                    "text_encoder.": "te1", "text_encoder_2.": "te2", "text_encoder_3.": "te3"}
# ComfyUI's (and Forge Neo's) generic text-encoder keys: "text_encoders.<encoder>.[transformer.]<module>"; the
# encoder's name says which component it is (a language model used as text encoder is the only one, te1).
_TEXT_ENCODERS = "text_encoders."
_ENCODER_COMPONENTS = {"clip_l": "te1", "clip_h": "te1", "clip_g": "te2", "t5xxl": "te3", "umt5xxl": "te3"}
# diffusers' per-model prefixes of the adapter config in "lora_adapter_metadata".
_METADATA_PREFIXES = {"unet": ("unet.", "transformer."), "te1": ("text_encoder.",),
                      "te2": ("text_encoder_2.",), "te3": ("text_encoder_3.",)}


def split_key(key: str) -> Optional[tuple[str, str, str]]:
    """``file key -> (component, flat module name, canonical param)``, None if not understood."""
    for suffix in _SUFFIX_ORDER:
        if key.endswith(suffix):
            module, param = key[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        return None
    if suffix.startswith("_lora."):
        # Old diffusers attention processors: "attn1.processor.to_q_lora.down.weight".
        module = module.replace(".processor.", ".")
        if module.endswith(".to_out"):
            module += ".0"
    if module.startswith("base_model.model."):
        module = module[len("base_model.model."):]
    for prefix, comp in _KOHYA_PREFIXES.items():
        if module.startswith(prefix):
            return comp, module[len(prefix):], param
    for prefix, comp in _DOTTED_PREFIXES.items():
        if module.startswith(prefix):
            return comp, module[len(prefix):].replace(".", "_"), param
    if module.startswith(_TEXT_ENCODERS) and "." in module[len(_TEXT_ENCODERS):]:
        encoder, rest = module[len(_TEXT_ENCODERS):].split(".", 1)
        rest = rest.removeprefix("transformer.")
        return _ENCODER_COMPONENTS.get(encoder, "te1"), rest.replace(".", "_"), param
    if suffix in _KOHYA_SUFFIXES:
        return None  # a kohya/LyCORIS key without a known prefix (e.g. "bundle_emb...")
    # Bare PEFT names: a text encoder's modules live under "text_model." (or, with
    # transformers 5, directly under "encoder.layers.").
    comp = "te1" if module.startswith(("text_model.", "encoder.layers.")) else "unet"
    return comp, module.replace(".", "_"), param


def _peft_alpha(metadata: dict[str, str], component: str, module_key: str) -> tuple[Optional[float], bool]:
    """``(lora_alpha, use_rslora)`` that diffusers/PEFT wrote into the header metadata."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None, False
    try:
        meta = json.loads(raw)
    except ValueError:
        return None, False
    # diffusers packs one adapter config per model as "<prefix>.<field>"; PEFT writes it bare.
    prefixes = _METADATA_PREFIXES[component]

    def get(name: str) -> object:
        return next((meta[p + name] for p in prefixes if p + name in meta), meta.get(name))

    alpha = get("lora_alpha")
    # alpha_pattern keys match the end of a dotted module name; compare flattened names instead.
    for pattern, value in (get("alpha_pattern") or {}).items():
        flat = pattern.replace(".", "_").replace(r"\_", "_")
        if re.fullmatch(rf"(.*_)?{flat}", module_key):
            alpha = value
    return (float(alpha) if alpha is not None else None), bool(get("use_rslora"))


def _scalar(t: Optional[Tensor]) -> Optional[float]:
    return None if t is None else float(t.float().reshape(-1)[0])


def _build(params: dict[str, Tensor], metadata: dict[str, str], comp: str, flat: str,
           peft_style: bool) -> ModuleDelta:
    """One delta from the parameters of one module; raises ValueError when incomplete."""
    p = params
    alpha = _scalar(p.get("alpha"))
    if "down" in p or "up" in p:
        if "down" not in p or "up" not in p:
            raise ValueError("has only one of the two LoRA factors")
        rank = p["down"].shape[0]
        use_rslora = False
        if alpha is None and peft_style:
            alpha, use_rslora = _peft_alpha(metadata, comp, flat)
        alpha = rank if alpha is None else alpha
        scale = alpha / (math.sqrt(rank) if use_rslora else rank)
        bias = p["up_bias"] * scale if "up_bias" in p else None
        delta: ModuleDelta = LowRank(p["down"], p["up"], scale, p.get("mid"), bias)
    elif "hada_w1_a" in p:
        rank = p["hada_w1_b"].shape[0]
        scale = (rank if alpha is None else alpha) / rank
        delta = LoHa(p["hada_w1_a"], p["hada_w1_b"], p["hada_w2_a"], p["hada_w2_b"], scale,
                     p.get("hada_t1"), p.get("hada_t2"), p.get("diff_b"))
    elif any(k.startswith("lokr_") for k in p):
        factored = "lokr_w1_a" in p or "lokr_w2_a" in p
        scale = 1.0
        if factored and alpha is not None:
            # LyCORIS: alpha/rank only when a side is factored, the rank being that side's.
            rank = (p["lokr_w1_b"] if "lokr_w1_b" in p else p["lokr_w2_b"]).shape[0]
            scale = alpha / rank
        delta = LoKr(p.get("lokr_w1"), p.get("lokr_w1_a"), p.get("lokr_w1_b"), p.get("lokr_w2"),
                     p.get("lokr_w2_a"), p.get("lokr_w2_b"), scale, p.get("lokr_t2"), p.get("diff_b"))
    elif "diff" in p:
        delta = FullDiff(p["diff"], p.get("diff_b"))
    else:
        raise ValueError("has no weight parameters (only " + ", ".join(sorted(p)) + ")")
    if "dora_scale" in p:
        return DoRA(delta, p["dora_scale"])
    if "magnitude" in p:
        return DoRA(delta, p["magnitude"], per_output=True)
    return delta


def read_lora_file(path: str | Path) -> LoraFile:
    """Read a LoRA/LyCORIS ``.safetensors`` file (kohya, A1111, diffusers, PEFT, BFL/ComfyUI layouts)."""
    path = Path(path)
    name = path.stem
    if path.suffix.lower() in (".pt", ".ckpt", ".bin", ".pth"):
        raise LoraFileError(
            f"LoRA '{path.name}' is a pickled PyTorch file ({path.suffix}); LoRAtorio only reads "
            ".safetensors because pickles can run code when loaded. Convert it to .safetensors "
            "(e.g. with kohya's sd-scripts or any 'pt to safetensors' converter) and use that file.")
    if not path.is_file():
        raise LoraFileError(f"LoRA file '{path}' does not exist. Check the name and the Lora folder.")
    if path.stat().st_size == 0:
        raise LoraFileError(f"LoRA file '{path.name}' is empty (0 bytes); download it again.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged headers/data
        raise LoraFileError(
            f"LoRA file '{path.name}' is not a readable .safetensors file ({e}); it is probably "
            "truncated or corrupt: download it again.") from e

    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise LoraFileError(
            f"LoRA file '{path.name}' holds NaN or infinite values in {len(bad)} of its {len(tensors)} tensors "
            f"(e.g. {bad[0]}): the file is damaged or was saved from a diverged training run. Use another "
            "copy or an earlier epoch of it.")

    grouped: dict[tuple[str, str], dict[str, Tensor]] = {}
    skipped: dict[str, str] = {}
    peft_style: set[tuple[str, str]] = set()
    for key, tensor in tensors.items():
        parts = split_key(key)
        if parts is None:
            skipped[key] = "key of no known LoRA layout"
            continue
        comp, flat, param = parts
        grouped.setdefault((comp, flat), {})[param] = tensor
        if not key.startswith("lora_"):
            peft_style.add((comp, flat))

    modules: dict[str, ModuleDelta] = {}
    for (comp, flat), params in grouped.items():
        try:
            modules[f"{comp}:{flat}"] = _build(params, metadata, comp, flat, (comp, flat) in peft_style)
        except (ValueError, KeyError, RuntimeError, IndexError) as err:
            reason = str(err) if isinstance(err, ValueError) else f"its tensors do not fit together ({err})"
            skipped[f"{comp}:{flat}"] = f"could not be built: {reason}"
    if not modules:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors at all"
        raise LoraFileError(
            f"LoRA file '{path.name}' contains no LoRA weights LoRAtorio recognizes (first keys: "
            f"{sample}). It may be an embedding, a full checkpoint or an unsupported LoRA type; "
            "use a kohya/A1111, diffusers/PEFT or LyCORIS (LoHa, LoKr, full) LoRA file.")
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return LoraFile(path=path, name=name, metadata=metadata, modules=modules, skipped=skipped, nbytes=nbytes)
