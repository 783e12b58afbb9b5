"""Each LoRA branch's own text conditioning in ComfyUI: the prompt encoded with the LoRA's text-encoder part.

ComfyUI encodes a prompt in its own node, before sampling, so the branches' conditionings travel with the prompt's
CONDITIONING. ``LoRAtorio Text Encode`` encodes the text once as CLIPTextEncode does, then once per LoRA of the stack
that has text-encoder parts, with that LoRA's deltas added by the branch runner's forward hooks on the text
encoder's layers (nothing merged: ComfyUI's own CLIP patches, from LoraLoader upstream, stay the base). The branch
encodings are extra entries of the CONDITIONING, marked with their LoRA and the base entry they belong to and of
strength 0, so that ComfyUI turns them into model conditioning exactly as it does the prompt's (``extra_conds``:
Flux.2's padding, SDXL's size embedding, Lumina's token count...), and a sampler without LoRAtorio gives the
base image (those entries weigh nothing; they still cost a model evaluation each).

For the Stack mode, whose prompt rows run every LoRA at once, the text is also encoded with every LoRA's
text-encoder parts together (as a stack of ``<lora>`` tags does), when two or more LoRAs of the stack have them.

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
from ..branches import MIXED, lora_branch
from ..composing_session import LIBRARY
from ..errors import LoratorioError
from ..network_names import bind_lora
from ..text_encoders import text_encoder_components
from .stack import LoraStack, StackEntry

BASE_KEY = "loratorio_text"       # on the prompt's own entries: an id their branch entries name
BRANCH_KEY = "loratorio_branch"   # on a branch's entries: (the base entries' id, LoRA name, strength)
STACK_KEY = "loratorio_stack"     # on the every-LoRA entries: (the base entries' id, ((LoRA name, strength), ...))
#: uuid of a base conditioning entry -> {LoRA index, or MIXED for every LoRA at once: that model conditioning
#: (name -> ComfyUI COND)}
BranchConds = dict[Any, dict[int, dict[str, Any]]]


def encode_with_branches(clip: Any, text: str, stack: Optional[LoraStack]) -> list:
    """CONDITIONING of ``text``: CLIPTextEncode's entries, then per LoRA of ``stack`` with text-encoder parts its
    own encoding, and with two or more such LoRAs the encoding with all of their parts (the Stack mode's), as
    entries of strength 0 marked for LoRAtorio."""
    tokens = clip.tokenize(text)
    base = clip.encode_from_tokens_scheduled(tokens)
    text_id = uuid.uuid4().hex
    out = [[cond, {**extras, BASE_KEY: text_id}] for cond, extras in base]
    components = text_encoder_components(dict(clip.cond_stage_model.named_children()))
    with_parts = []
    for entry in (e for e in stack or () if e.strength != 0):
        bound = _bound_text_parts(entry, components)
        if bound is None:
            continue
        with_parts.append((entry, bound))
        out += _marked(_encoded(clip, tokens, [(entry, bound)], lora_branch(0)),
                       {BRANCH_KEY: (text_id, entry.name, entry.strength)})
    if len(with_parts) > 1:
        pairs = tuple((entry.name, entry.strength) for entry, _ in with_parts)
        out += _marked(_encoded(clip, tokens, with_parts, MIXED), {STACK_KEY: (text_id, pairs)})
    return out


def _encoded(clip: Any, tokens: Any, loras: list[tuple[StackEntry, Any]], branch: int) -> list:
    """``tokens`` encoded with the text-encoder parts of ``loras`` ((entry, bound LoRA)) applied, as ``branch``."""
    with BranchRunner([bound for _, bound in loras], [entry.strength for entry, _ in loras],
                      labels=[f"LoRA '{entry.name}'" for entry, _ in loras]) as runner, runner.whole_batch(branch):
        return clip.encode_from_tokens_scheduled(tokens)


def _marked(encoded: list, mark: dict) -> list:
    """Conditioning entries of strength 0 carrying LoRAtorio's ``mark``."""
    return [[cond, {**extras, **mark, "strength": 0.0}] for cond, extras in encoded]


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
    """``conds`` (ComfyUI's cond lists of a model call: prompt, negative prompt...) without LoRAtorio's entries, and
    those entries' model conditioning by the uuid of their base entry and the index of their LoRA in ``loras``
    ((name, strength) of the LoRAs being composed; a branch of another LoRA is dropped). Under MIXED: the text with
    every composed LoRA's text-encoder parts (the one LoRA's own where only one has them), for the Stack mode."""
    loras = list(loras)
    kept, branches = [], {}
    for cond_list in conds:
        if cond_list is None:
            kept.append(None)
            continue
        base_of = {c[BASE_KEY]: c["uuid"] for c in cond_list if BASE_KEY in c}
        kept.append([c for c in cond_list if BRANCH_KEY not in c and STACK_KEY not in c])
        stacked = {}
        for c in cond_list:
            if BRANCH_KEY in c:
                text_id, name, strength = c[BRANCH_KEY]
                if (name, strength) in loras and text_id in base_of:
                    branches.setdefault(base_of[text_id], {})[loras.index((name, strength))] = c["model_conds"]
            elif STACK_KEY in c and c[STACK_KEY][0] in base_of:
                text_id, pairs = c[STACK_KEY]
                stacked[base_of[text_id]] = (pairs, c["model_conds"])
        for base, own in branches.items():
            if len(own) == 1:
                own[MIXED] = next(iter(own.values()))
            elif base in stacked and {loras[i] for i in own} == set(stacked[base][0]):
                own[MIXED] = stacked[base][1]
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
