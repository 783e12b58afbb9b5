"""Each LoRA branch's own text conditioning in ComfyUI: the prompt encoded with the LoRA's text-encoder part.

ComfyUI encodes a prompt in its own node, before sampling, so the branches' conditionings travel with the prompt's
CONDITIONING. ``LoRAtorio Text Encode`` encodes the text once as CLIPTextEncode does, then once per LoRA of the stack
that has text-encoder parts, with that LoRA's deltas added by the branch runner's forward hooks on the text
encoder's layers (nothing merged: ComfyUI's own CLIP patches, from LoraLoader upstream, stay the base). The branch
encodings are extra entries of the CONDITIONING, marked with their LoRA and the base entry they belong to and of
strength 0, so that ComfyUI turns them into model conditioning exactly as it does the prompt's (``extra_conds``:
Flux.2's padding, SDXL's size embedding, Lumina's token count...), and a sampler without LoRAtorio gives the
base image (those entries weigh nothing; they still cost a model evaluation each).

While sampling, LoRAtorio's ``CALC_COND_BATCH`` wrapper takes the branch entries out of the conds before ComfyUI
batches them (:func:`split_branch_conds`); the model wrapper then gives a LoRA branch's rows its entry's tensors
(:func:`substitute_row`) where the row's chunk came from the base entry (``transformer_options["uuids"]``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Optional

import torch

from ..branch_runner import BranchRunner
from ..branches import lora_branch
from ..composing_session import LIBRARY
from ..errors import LoratorioError
from ..network_names import bind_lora
from ..text_encoders import text_encoder_components
from .stack import LoraStack, StackEntry

BASE_KEY = "loratorio_text"       # on the prompt's own entries: an id their branch entries name
BRANCH_KEY = "loratorio_branch"   # on a branch's entries: (the base entries' id, LoRA name, strength)
#: uuid of a base conditioning entry -> {LoRA index: that LoRA's model conditioning (name -> ComfyUI COND)}
BranchConds = dict[Any, dict[int, dict[str, Any]]]


def encode_with_branches(clip: Any, text: str, stack: Optional[LoraStack]) -> list:
    """CONDITIONING of ``text``: CLIPTextEncode's entries, then per LoRA of ``stack`` with text-encoder parts its
    own encoding as entries of strength 0 marked for LoRAtorio."""
    tokens = clip.tokenize(text)
    base = clip.encode_from_tokens_scheduled(tokens)
    text_id = uuid.uuid4().hex
    out = [[cond, {**extras, BASE_KEY: text_id}] for cond, extras in base]
    components = text_encoder_components(dict(clip.cond_stage_model.named_children()))
    for entry in (e for e in stack or () if e.strength != 0):
        bound = _bound_text_parts(entry, components)
        if bound is None:
            continue
        with BranchRunner([bound], [entry.strength], labels=[f"LoRA '{entry.name}'"]) as runner, \
                runner.whole_batch(lora_branch(0)):
            encoded = clip.encode_from_tokens_scheduled(tokens)
        out += [[cond, {**extras, BRANCH_KEY: (text_id, entry.name, entry.strength), "strength": 0.0}]
                for cond, extras in encoded]
    return out


def _bound_text_parts(entry: StackEntry, components: dict) -> Any:
    """``entry``'s LoRA bound to the text encoders (its UNet part left out), None if it has no text-encoder part."""
    if not components:
        return None
    try:
        bound = bind_lora(LIBRARY.load(entry.path), components, left_out=("unet",))
    except LoratorioError as err:
        raise type(err)(f"{err} (LoRA '{entry.name}' in LoRAtorio Text Encode)") from err
    return bound if bound.targets else None


def split_branch_conds(conds: Sequence[Optional[list]], loras: Sequence[tuple[str, float]]) -> tuple[list, BranchConds]:
    """``conds`` (ComfyUI's cond lists of a model call: prompt, negative prompt...) without the branch entries, and
    those entries' model conditioning by the uuid of their base entry and the index of their LoRA in ``loras``
    ((name, strength) of the LoRAs being composed; a branch of another LoRA is dropped)."""
    kept, branches = [], {}
    for cond_list in conds:
        if cond_list is None:
            kept.append(None)
            continue
        base_of = {c[BASE_KEY]: c["uuid"] for c in cond_list if BASE_KEY in c}
        kept.append([c for c in cond_list if BRANCH_KEY not in c])
        for c in cond_list:
            if BRANCH_KEY not in c:
                continue
            text_id, name, strength = c[BRANCH_KEY]
            if (name, strength) in loras and text_id in base_of:
                branches.setdefault(base_of[text_id], {})[list(loras).index((name, strength))] = c["model_conds"]
    return kept, branches


def substitute_row(c: dict, row: int, model_conds: dict[str, Any]) -> bool:
    """Put a branch's conditioning into row ``row`` of a model call's ``c`` (its tensors, taken for this
    evaluation); False where a tensor does not fit the row (then the row keeps the base text)."""
    fits = True
    for key, cond in model_conds.items():
        value, target = getattr(cond, "cond", None), c.get(key)
        if not isinstance(value, torch.Tensor) or not isinstance(target, torch.Tensor) or target.dim() == 0:
            continue
        value = value[0]
        if value.dim() >= 2 and value.shape[0] != target.shape[1] and target.shape[1] % value.shape[0] == 0:
            value = value.repeat(target.shape[1] // value.shape[0], *[1] * (value.dim() - 1))  # ComfyUI's lcm
        if value.shape != target.shape[1:]:
            fits = False
            continue
        target[row] = value.to(target)
    return fits
